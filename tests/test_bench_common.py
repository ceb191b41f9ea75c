"""The benchmarks' record writer, as a benchmark process calls it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from testkit.servers import REPO

WRITE_TWICE_IN_ONE_SECOND = """
import datetime, sys
from pathlib import Path
import bench.common as common

class Frozen(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime.datetime(2026, 12, 1, 23, 22, 5, tzinfo=tz)

common.datetime.datetime = Frozen
for seed in (0, 1):
    print(common.write_result("demo", {"seed": seed}, folder=Path(sys.argv[1])).name)
"""


def test_records_of_runs_that_end_in_the_same_second_are_both_kept(tmp_path):
    """Two seeds run side by side once ended in the same second, and the second record overwrote the first."""
    run = subprocess.run(
        [sys.executable, "-c", WRITE_TWICE_IN_ONE_SECOND, str(tmp_path)],
        cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["demo-cpu-20261201-232205.json", "demo-cpu-20261201-232205-2.json"]
    seeds = [json.loads((tmp_path / name).read_text())["seed"] for name in run.stdout.split()]
    assert seeds == [0, 1]
