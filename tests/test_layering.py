"""Layers are one-way: kernels/ <- pipelines/contract.py <- pipelines/; server/ implements the contract.

Each top-level package may import only the packages its layer allows (every `import` in the file,
function bodies included). The check is tested on a tree with a cycle written for the purpose, so
it is known to fail when a layer is crossed; and the real imports are checked at run time too, so a
dynamic import cannot hide one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.servers import REPO

THIRD_PARTY_IN_KERNELS = {"torch", "kornia", "numpy"}
# (package, module) -> the first-party modules it may import; a module not named uses its package's rule
ALLOWED = {
    "kernels": {"kernels"},
    "pipelines.contract": {"kernels"},
    "pipelines": {"kernels", "pipelines"},
    "server": {"kernels", "pipelines.contract", "server"},
    "testkit": {"kernels", "pipelines", "server", "testkit"},
    "tests": {"kernels", "pipelines", "server", "testkit", "tests"},
    "bench": {"kernels", "pipelines", "server", "testkit", "bench"},
}
FIRST_PARTY = {"kernels", "pipelines", "server", "testkit", "tests", "bench"}


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, module: str) -> list[str]:
    """Every module `path` imports, relative imports resolved."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".")
                base = ".".join(package[: len(package) - node.level + (path.name == "__init__.py")])
                names.append(f"{base}.{node.module}" if node.module else base)
            else:
                names.append(node.module)
    return names


def rule_for(module: str) -> set[str]:
    """The most specific rule: `pipelines.contract` before `pipelines`."""
    for owner in sorted(ALLOWED, key=len, reverse=True):
        if module == owner or module.startswith(owner + "."):
            return ALLOWED[owner]
    raise AssertionError(f"{module} is in no layer")


def within(name: str, allowed: set[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in allowed)


def layer_violations(root: Path) -> list[str]:
    """`file: imports X` for every first-party import a layer does not allow, and every
    third-party import in kernels/ other than torch, kornia and numpy."""
    violations = []
    stdlib = sys.stdlib_module_names
    for package in sorted(FIRST_PARTY):
        for path in sorted((root / package).rglob("*.py")):
            if "node_modules" in path.parts:
                continue
            module = module_name(root, path)
            allowed = rule_for(module)
            for name in imported(path, module):
                top = name.split(".")[0]
                if top in FIRST_PARTY:
                    if not within(name, allowed) and not within(name, {module}):
                        violations.append(f"{path.relative_to(root)}: imports {name}")
                elif package == "kernels" and top not in THIRD_PARTY_IN_KERNELS and top not in stdlib:
                    violations.append(f"{path.relative_to(root)}: imports {name}")
    return violations


def test_the_tree_keeps_its_layers():
    assert layer_violations(REPO) == []


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("relative", "text", "reported"),
    [
        # the cycle issue 9 removed: server importing an endpoint, an endpoint importing the server
        ("server/registry.py", "from pipelines.post_processing import EFFECTS\n", "pipelines.post_processing"),
        ("pipelines/base.py", "from server.context import RequestContext\n", "server.context"),
        ("pipelines/contract.py", "from pipelines.post_processing import EFFECTS\n", "pipelines.post_processing"),
        ("kernels/blur.py", "import PIL.Image\n", "PIL.Image"),
        ("kernels/blur.py", "def late():\n    from server import media\n", "server"),
        ("bench/speed.py", "from tests.fixtures.apps import submit\n", "tests.fixtures.apps"),
        ("tests/test_speed.py", "import bench.common\n", "bench.common"),
        ("testkit/helpers.py", "from tests.fixtures import apps\n", "tests.fixtures"),
    ],
)
def test_the_check_reports_a_crossed_layer(tmp_path, relative, text, reported):
    for package in FIRST_PARTY:
        write(tmp_path, f"{package}/__init__.py", "")
    write(tmp_path, "kernels/blur.py", "import math\nimport torch\nfrom kernels import _utils\n")
    write(tmp_path, "pipelines/post_processing.py", "from pipelines.contract import Pipeline\nimport kernels.blur\n")
    assert layer_violations(tmp_path) == []
    write(tmp_path, relative, text)
    assert layer_violations(tmp_path) == [f"{relative}: imports {reported}"]


LOADED = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print("\\n".join(sorted(sys.modules)))
"""


def loaded_after_importing(*modules: str) -> set[str]:
    run = subprocess.run(
        [sys.executable, "-c", LOADED, *modules], cwd=REPO, capture_output=True, text=True, check=True
    )
    return set(run.stdout.split())


@pytest.mark.slow
def test_importing_the_server_loads_no_endpoint():
    loaded = loaded_after_importing("server.app", "server.cli", "server.worker")
    assert {name for name in loaded if name.startswith("pipelines.")} == {"pipelines.contract"}


@pytest.mark.slow
def test_importing_every_endpoint_loads_no_server_module():
    endpoints = [path.stem for path in (REPO / "pipelines").glob("*.py") if path.stem != "__init__"]
    loaded = loaded_after_importing(*(f"pipelines.{name}" for name in endpoints))
    assert not {name for name in loaded if name == "server" or name.startswith("server.")}
