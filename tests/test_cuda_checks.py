"""CUDA trust checks on recorded numbers (the measuring halves need a GPU: see docs/gpu-validation.md)."""

from upbench import cuda_checks as cc


def test_timing_check_passes_agreeing_timers():
    t = cc.PairedTiming(events_ms=[1.0, 1.01, 0.99], host_ms=[1.05, 1.04, 1.06], return_ms=0.02, spin_ms=50.0)
    assert cc.timing_check(t) == "ok"


def test_launch_bound_calls_are_not_escaped_work():
    # 5 µs kernels behind 12 µs of launch overhead: host and events both see the launch gaps
    t = cc.PairedTiming(events_ms=[0.012] * 5, host_ms=[0.016] * 5, return_ms=0.01, spin_ms=50.0)
    assert cc.timing_check(t) == "ok"


def test_work_on_another_stream_is_escaped():
    t = cc.PairedTiming(events_ms=[0.01, 0.012, 0.011], host_ms=[2.0, 2.1, 1.9], return_ms=0.02, spin_ms=50.0)
    assert cc.timing_check(t).startswith("escaped-stream (events 0.011 ms vs synchronised host clock 2 ms")


def test_a_call_that_waits_for_the_gpu_is_a_host_sync():
    t = cc.PairedTiming(events_ms=[1.0] * 3, host_ms=[1.0] * 3, return_ms=49.0, spin_ms=50.0)
    assert cc.timing_check(t).startswith("host-sync")
    both = cc.PairedTiming(events_ms=[0.01] * 3, host_ms=[1.0] * 3, return_ms=51.0, spin_ms=50.0)
    assert cc.timing_check(both).count("; ") == 1


def test_energy_per_call_from_counter_readings():
    got = cc.joules_per_call(1_000_000, 1_250_000, calls=1000, window_s=1.2)
    assert got == {"energy_j_per_call": 0.25, "energy_window_s": 1.2, "energy_calls": 1000}
    assert "under 1.0 s" in cc.joules_per_call(0, 10, calls=10, window_s=0.3)["energy_reason"]
    assert "backwards" in cc.joules_per_call(10, 0, calls=10, window_s=1.5)["energy_reason"]


def test_clocks_locked_and_energy_absent_on_the_cpu():
    assert cc.clocks_locked(0x2, None, None) and cc.clocks_locked(0, 1410, 1980)
    assert not cc.clocks_locked(0x1, 1980, 1980) and not cc.clocks_locked(0, None, 1980)
    assert cc.energy_unavailable("cpu") == "no energy counter on the CPU (NVML's counter is GPU-only)"
    assert cc.measure_energy(lambda: None, "cpu") == {"energy_reason": cc.energy_unavailable("cpu")}


def test_backend_that_ran():
    def fn():
        return None
    assert cc.backend_of(fn) is None
    fn.upbench_backend = "torch-fallback"
    assert cc.backend_of(fn) == "torch-fallback"
    fn.upbench_backend = lambda: "cupy"
    assert cc.backend_of(fn) == "cupy"


def test_trust_metrics_are_declared_in_run_order_and_energy_is_opt_in():
    from upbench import sweeps
    from upbench.metrics import METRICS

    names = [m.name for m in METRICS]
    assert names.index("latency") < names.index("timing_check") < names.index("memory")
    assert names.index("determinism") < names.index("backend")  # after every call
    assert names.index("roofline") < names.index("floor") and names[-1] == "trust"
    raw = {"axes": {"C": 4, "H": 4}, "op": [{"name": "bilinear"}]}
    assert "energy" not in sweeps.parse(raw, "t").metrics
    assert "energy" in sweeps.parse({**raw, "suite": {"metrics": ["energy"]}}, "t").metrics


def test_energy_on_the_cpu_is_recorded_as_missing_with_its_reason():
    from upbench import runner, sweeps
    from upbench.timing import Stopping

    suite = sweeps.parse({"suite": {"metrics": ["energy"]}, "axes": {"C": 2, "H": 3},
                          "op": [{"name": "bilinear"}]}, "t")
    cell = sweeps.expand(suite)[0]
    row = runner.run_cell(cell, runner.Options("t", suite.metrics, Stopping()))
    assert row["status"] == "ok" and row["energy_reason"] == cc.energy_unavailable("cpu")
    assert "energy_j_per_call" not in row and row["trust"] == "ok"
