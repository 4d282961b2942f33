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
