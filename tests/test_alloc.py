"""Allocation modes: the warm pool removes the first-touch page faults of a large fresh output."""

import sys

import pytest
import torch

from upbench.alloc import allocation_mode, unavailable
from upbench.timing import Stopping, time_cpu


def _fresh_output():
    # 36 MiB: above glibc's largest dynamic mmap threshold (32 MiB), so mmapped afresh on every call, like the
    # 32 MiB output of SAPA core at B = 2, C = 256, 128² (smaller blocks glibc may keep by itself)
    return torch.empty(9 << 20).fill_(1.0)


@pytest.mark.skipif(sys.platform != "linux" or bool(unavailable("warm")), reason="needs glibc")
def test_warm_mode_removes_first_touch_faults_and_fresh_pays_them():
    st = Stopping(budget_s=0.05, min_samples=3, warmup_s=0.01)
    fresh = time_cpu(_fresh_output, st, threads=1)
    with allocation_mode("warm"):
        warm = time_cpu(_fresh_output, st, threads=1)
    assert fresh.minor_faults_per_call > 1000  # 9,216 pages of 4 KiB (fewer with huge pages)
    assert warm.minor_faults_per_call < 0.1 * fresh.minor_faults_per_call


def test_unknown_mode():
    assert "modes are fresh, warm" in unavailable("cold")
    with pytest.raises(ValueError), allocation_mode("cold"):
        pass
