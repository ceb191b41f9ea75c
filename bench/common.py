"""What every benchmark records beside its numbers: where, when and on which commit it ran."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

import server

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu: {cpu}",
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "kiln": server.__version__,
    }


def commit() -> str:
    """The checked-out commit, or `KILN_COMMIT` where the tree was copied without its git history (a lent GPU)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("KILN_COMMIT", "unknown")


def write_result(name: str, numbers: dict[str, Any], folder: Path = RESULTS, path: Path | None = None) -> Path:
    """Writes the record to a new dated file in `folder`, or over `path` (a benchmark that records each
    phase as it ends, so a run stopped at a time limit keeps what it measured); returns the file."""
    now = datetime.datetime.now(datetime.timezone.utc)
    record = {"benchmark": name, "date": now.isoformat(timespec="seconds"), "commit": commit(), **machine(), **numbers}
    if path is None:
        folder.mkdir(parents=True, exist_ok=True)
        device = "gpu" if torch.cuda.is_available() else "cpu"
        path = _new_file(folder, f"{name}-{device}-{now:%Y%m%d-%H%M%S}")
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def _new_file(folder: Path, stem: str) -> Path:
    """Creates and returns ``folder/stem.json``, or ``stem-2.json``, ``stem-3.json`` ... where other runs (two
    seeds side by side, say) ended in the same second: creating the file, not looking for it first, keeps two
    processes from taking one name."""
    number = 1
    while True:
        path = folder / (f"{stem}.json" if number == 1 else f"{stem}-{number}.json")
        try:
            path.touch(exist_ok=False)
            return path
        except FileExistsError:
            number += 1


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]
