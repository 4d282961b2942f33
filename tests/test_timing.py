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

    def usage(self):  # all the wall time was CPU time of this process; no switches, no faults
        return self.t, 0, 0


def test_inner_loop_is_calibrated_to_the_minimum_sample_time():
    clk = FakeClock(1e-5)
    lat = time_cpu(clk.fn, Stopping(min_sample_s=1e-3, warmup_s=1e-3), clock=clk, usage=clk.usage)
    assert lat.inner == 100
    assert lat.median == pytest.approx(1e-5)
    assert lat.stop == "converged" and len(lat.samples) == 5 and lat.verdict(0.03) == "stable"


def test_noisy_samples_run_to_the_budget_and_say_so():
    clk = FakeClock(1e-3)
    costs = iter([1e-3, 3e-3] * 1000)
    def fn():
        clk.t += next(costs)
    lat = time_cpu(fn, Stopping(budget_s=0.05, min_sample_s=1e-4, warmup_s=0), clock=clk, usage=clk.usage)
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


class PreemptingClock(FakeClock):
    """Every call costs ``cost`` of CPU; ``steal`` of extra wall time (another process ran) on chosen calls."""

    def __init__(self, cost, steal, every):
        super().__init__(cost)
        self.cpu, self.switches, self.faults, self.steal, self.every, self.n = 0.0, 0, 0, steal, every, 0

    def fn(self):
        self.n += 1
        self.t += self.cost
        self.cpu += self.cost
        self.faults += 2
        if self.every and self.n % self.every == 0:
            self.t += self.steal
            self.switches += 1

    def usage(self):
        return self.cpu, self.switches, self.faults


def test_preempted_samples_are_discarded_and_counted():
    clk = PreemptingClock(1e-3, 5e-3, every=7)  # one sample in seven loses a time slice
    lat = time_cpu(clk.fn, Stopping(min_sample_s=1e-3, warmup_s=0, min_samples=10), clock=clk, usage=clk.usage,
                   threads=1)
    assert lat.preempted >= 1 and lat.median == pytest.approx(1e-3) and max(lat.samples) == pytest.approx(1e-3)
    assert lat.verdict(0.03) == "stable" and lat.minor_faults_per_call == pytest.approx(2.0)


def test_a_row_that_always_waits_for_a_time_slice_is_contended_never_stable():
    # The bilinear case: every sample waits the same ~24 ms for a 0.4 ms call; the spread is tiny.
    clk = PreemptingClock(0.4e-3, 23.6e-3, every=1)
    lat = time_cpu(clk.fn, Stopping(min_sample_s=1e-4, warmup_s=0, budget_s=0.5), clock=clk, usage=clk.usage,
                   threads=2)
    assert lat.rel_iqr < 0.01 and lat.verdict(0.03) == "contended" and lat.contended


def test_a_switch_that_cost_nothing_is_not_preemption():
    from upbench.timing import preempted

    assert not preempted(wall=1.0, cpu=0.99, switches=1, threads=1)
    assert preempted(wall=1.0, cpu=0.5, switches=1, threads=1)
    assert not preempted(wall=1.0, cpu=0.5, switches=0, threads=1)  # an idle wait inside the call, not the OS
    assert not preempted(wall=1.0, cpu=1.2, switches=-1, threads=2)  # no switch count: only one thread is judged


def test_busy_machine_by_load_average():
    from upbench.timing import busy

    assert busy({"load1": 5.0, "cores": 2}) == "load average 5 on 2 cores"
    assert busy({"load1": 1.0, "cores": 2}) is None and busy({"reason": "no load"}) is None
