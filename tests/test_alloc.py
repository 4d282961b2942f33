"""Allocation modes: the warm pool removes the first-touch page faults of a large fresh output."""

import json
import subprocess
import sys

import pytest

from upbench.alloc import allocation_mode, unavailable

# In a fresh process: how far the heap can grow by brk depends on what a long-lived process has mapped.
PROBE = """
import json, torch
from upbench.alloc import allocation_mode
from upbench.timing import Stopping, time_cpu
# 36 MiB: above glibc's largest dynamic mmap threshold (32 MiB), so mmapped afresh on every call, like the
# 32 MiB output of SAPA core at B = 2, C = 256, 128²
fresh_output = lambda: torch.empty(9 << 20).fill_(1.0)
# warm-up long enough for the warm pool to settle (a few calls) even on a loaded machine
st = Stopping(budget_s=0.05, min_samples=3, warmup_s=0.3)
fresh = time_cpu(fresh_output, st, threads=1).minor_faults_per_call
with allocation_mode("warm"):
    for _ in range(3):  # settle the pool by calls, not by time: on a loaded machine 0.3 s may be one call
        fresh_output()
    warm = time_cpu(fresh_output, st, threads=1).minor_faults_per_call
print(json.dumps([fresh, warm]))
"""


@pytest.mark.skipif(sys.platform != "linux" or bool(unavailable("warm")), reason="needs glibc")
def test_warm_mode_removes_first_touch_faults_and_fresh_pays_them():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    fresh, warm = json.loads(out.stdout)
    assert fresh > 1000  # 9,216 pages of 4 KiB (fewer with huge pages)
    assert warm < 0.1 * fresh


def test_unknown_mode():
    assert "modes are fresh, warm" in unavailable("cold")
    with pytest.raises(ValueError), allocation_mode("cold"):
        pass


def _ids(path: str) -> list[str]:
    from pathlib import Path

    rows = json.loads((Path(__file__).parent.parent / path).read_text())["rows"]
    return sorted(r["cell_id"] for r in rows)


@pytest.mark.parametrize("suite, recorded", [("gate", "baselines/AMD-EPYC-1-threads/cpu-gate.json"),
                                             ("memory", "reports/memory-cpu/results.json")])
def test_the_alloc_axis_keeps_the_cell_ids_of_runs_made_before_it(suite, recorded):
    # both were recorded before the axis existed: their ids are what baselines and --resume match on
    from upbench import sweeps

    cells = sweeps.expand(sweeps.load(suite), overrides={"device": ("cpu",)})
    assert set(_ids(recorded)) <= {c.id for c in cells}  # impls added since then add cells, change none
    warm = sweeps.expand(sweeps.load(suite), overrides={"device": ("cpu",), "alloc": ("warm",)})
    assert not {c.id for c in warm} & {c.id for c in cells}  # a warm cell is a different measurement
    assert [c.case.seed() for c in warm] == [c.case.seed() for c in cells]  # ... of the same inputs


def test_cuda_cells_have_no_allocation_mode():
    from upbench import sweeps

    cells = sweeps.expand(sweeps.load("gate"), overrides={"device": ("cuda",), "alloc": ("fresh", "warm")})
    one = sweeps.expand(sweeps.load("gate"), overrides={"device": ("cuda",)})
    assert [c.id for c in cells] == [c.id for c in one] and {c.case.alloc for c in cells} == {None}


SUITE = """
[suite]
name = "alloc-test"
metrics = ["latency"]
[timing]
budget_s = 0.05
min_samples = 3
warmup_s = 0.3
[axes]
B = 1
C = 256
H = 96
threads = 1
alloc = ["fresh", "warm"]
[[op]]
name = "bilinear"
impls = ["torch"]
"""


@pytest.mark.skipif(sys.platform != "linux" or bool(unavailable("warm")), reason="needs glibc")
def test_a_warm_cell_runs_without_the_first_touch_faults_a_fresh_cell_pays(tmp_path):
    # bilinear ×2 of 256×96² fp32: a 36 MiB output, mmapped afresh per call unless the pool is warm
    (tmp_path / "alloc.toml").write_text(SUITE)
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "upbench.cli", "run", "--suite", str(tmp_path / "alloc.toml"),
                    "--device", "cpu", "--out", str(out), "--no-progress"],
                   check=True, capture_output=True, timeout=300)
    rows = {r["alloc"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["fresh"]["status"] == rows["warm"]["status"] == "ok"
    assert rows["fresh"]["minor_faults_per_call"] > 1000
    assert rows["warm"]["minor_faults_per_call"] < 0.1 * rows["fresh"]["minor_faults_per_call"]


def test_the_report_says_what_cpu_times_include_and_pairs_fresh_with_warm():
    import pandas as pd

    from upbench.report import allocation_lines

    base = {"op": "sapa", "impl": "cpu-kernel", "B": 2, "C": 256, "H": 64, "s": 2, "K": 5, "dtype": "float32",
            "pass": "fwd", "device": "cpu", "status": "ok"}
    fresh = {**base, "alloc": "fresh", "latency_median_ms": 27.0, "minor_faults_per_call": 8193.0}
    warm = {**base, "alloc": "warm", "latency_median_ms": 9.0, "minor_faults_per_call": 1.0}
    only = "\n".join(allocation_lines(pd.DataFrame([fresh])))
    assert "plain call's (`fresh`)" in only and "| fresh ms" not in only
    both = "\n".join(allocation_lines(pd.DataFrame([fresh, warm])))
    (row,) = [ln for ln in both.splitlines() if ln.startswith("| sapa")]
    assert [c.strip() for c in row.split("|")[1:-1]] == ["sapa", "cpu-kernel", "B=2 C=256 H=64 s=2 K=5 dtype=float32 "
                                                         "pass=fwd", "27", "9", "3.00", "8193", "1"]
    assert allocation_lines(pd.DataFrame([{**base, "device": "cuda", "alloc": None, "latency_median_ms": 1.0}])) == []
