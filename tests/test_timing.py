import time

import pytest

from upbench.errors import UsageError
from upbench.timing import Latency, Stopping, check_cuda_timing_allowed, time_cpu


class FakeClock:
    """Each call of fn advances time by a fixed cost; reading the clock is free."""

    def __init__(self, cost):
        self.t, self.cost = 0.0, cost

    def __call__(self):
        return self.t

    def fn(self):
        self.t += self.cost


def test_inner_loop_is_calibrated_to_the_minimum_sample_time():
    clk = FakeClock(1e-5)
    lat = time_cpu(clk.fn, Stopping(min_sample_s=1e-3, warmup_s=1e-3), clock=clk)
    assert lat.inner == 100
    assert lat.median == pytest.approx(1e-5)
    assert lat.stop == "converged" and len(lat.samples) == 5 and lat.verdict(0.03) == "stable"


def test_noisy_samples_run_to_the_budget_and_say_so():
    clk = FakeClock(1e-3)
    costs = iter([1e-3, 3e-3] * 1000)
    def fn():
        clk.t += next(costs)
    lat = time_cpu(fn, Stopping(budget_s=0.05, min_sample_s=1e-4, warmup_s=0), clock=clk)
    assert lat.stop == "budget" and lat.verdict(0.03) == "noisy"


def test_known_duration_is_measured_within_3_percent():
    def spin(d=2e-3):
        end = time.perf_counter() + d
        while time.perf_counter() < end:
            pass
    lat = time_cpu(spin, Stopping(budget_s=0.5, min_samples=7, target_rel_iqr=0.01))
    assert lat.median == pytest.approx(2e-3, rel=0.03)


def test_slowdown_by_a_known_factor_is_seen():
    def work(n):
        end = time.perf_counter() + n * 5e-4
        while time.perf_counter() < end:
            pass
    base = time_cpu(lambda: work(2), Stopping(budget_s=0.3))
    slow = time_cpu(lambda: work(3), Stopping(budget_s=0.3))
    assert slow.median / base.median == pytest.approx(1.5, rel=0.05)


def test_latency_summary():
    lat = Latency([1.0, 2.0, 3.0, 4.0, 100.0], 1, 1, "budget", "cpu")
    assert lat.median == 3.0 and lat.min == 1.0 and lat.iqr == 2.0


def test_cuda_launch_blocking_is_refused(monkeypatch):
    monkeypatch.setenv("CUDA_LAUNCH_BLOCKING", "1")
    with pytest.raises(UsageError, match="CUDA_LAUNCH_BLOCKING"):
        check_cuda_timing_allowed()
