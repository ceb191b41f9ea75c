"""Kiln: a self-hosted inference server that speaks fal.ai's queue protocol."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kiln")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
