"""The in-process Kiln app of the server tests, serving the real pipelines next to `kiln-test/steps`."""

from tests.server.conftest import client, make_client, registry  # noqa: F401  (fixtures, shared not copied)
