"""Speed of light: the floor, the implausible verdict, and speed-up flags (pure functions)."""

import math

from upbench import floor
from upbench.trust import flags, trust


def test_floor_is_the_slower_of_compute_and_bytes():
    assert floor.floor_ms(2e9, 1e9, gflops=100, gbps=10) == 100.0  # bytes: 1e9 / 10e9 s = 100 ms
    assert floor.floor_ms(2e12, 1e9, gflops=100, gbps=10) == 20_000.0  # flops: 2e12 / 1e11 s
    assert floor.floor_ms(2e9, None, gflops=100, gbps=10) == 20.0
    assert floor.floor_ms(0, None, gflops=100, gbps=10) is None
    assert floor.floor_ms(2e9, 1e9, gflops=None, gbps=None) is None


def test_verdict_needs_more_than_noise_and_ceiling_slack():
    assert floor.verdict(10.0, 0.01, 10.0) == "ok"
    assert floor.verdict(8.0, 0.01, 10.0) == "ok"  # 20 % under: inside the ceiling slack
    assert floor.verdict(5.0, 0.01, 10.0) == "implausible"
    assert floor.verdict(5.0, 0.3, 10.0) == "ok"  # so noisy that the beat is not clear
    assert floor.verdict(5.0, math.nan, 10.0) == "implausible"
    assert floor.verdict(5.0, 0.01, None) == ""


def test_floor_columns_use_bytes_only_for_forward_passes():
    roof = {"matmul_GFLOPs": 100.0, "copy_GBps": 10.0}
    fwd = {"pass": "fwd", "flops": 2e6, "min_bytes": 1e8, "latency_median_ms": 1.0, "latency_rel_iqr": 0.01}
    c = floor.floor_columns(fwd, roof)
    assert c["floor_ms"] == 10.0 and c["latency_over_floor"] == 0.1 and c["floor_verdict"] == "implausible"
    bwd = {**fwd, "pass": "bwd"}
    c = floor.floor_columns(bwd, roof)
    assert c["floor_ms"] == 0.02 and c["floor_verdict"] == "ok"
    assert floor.floor_columns({"pass": "fwd", "flops": 0}, roof) == {}


def test_speedup_over_the_reference_impl_beyond_the_suite_limit_is_flagged(monkeypatch):
    def row(impl, lat, H=8, suite="s"):
        return {"suite": suite, "op": "sapa", "impl": impl, "H": H, "status": "ok", "latency_median_ms": lat}
    rows = [row("unfold", 100.0), row("lean", 10.0), row("kernel", 0.5), row("kernel", 0.5, H=16),
            row("unfold", 100.0, suite="t"), row("kernel", 0.5, suite="t")]
    monkeypatch.setitem(floor.MAX_SPEEDUP, "t", 500.0)
    got = floor.speedup_flags(rows, {"sapa": "unfold"}, ("suite", "op", "H"))
    assert list(got) == [2] and "200× over unfold (limit 100×)" in got[2]


def test_trust_summary():
    assert trust({"status": "ok", "agree": True, "floor_verdict": "ok", "timing_check": "ok"}) == "ok"
    assert trust({"status": "skipped"}) is None
    assert trust({"status": "failed", "reason": "RuntimeError: boom"}) is None
    assert trust({"status": "failed", "reason": "ModifiedInput: modified input y"}) == "modified-input"
    row = {"status": "ok", "agree": False, "agree_worst_input": "large@9x9", "property_check": "failed: convex: …",
           "floor_verdict": "implausible",
           "timing_check": "escaped-stream (events 0.1 ms vs …); host-sync (the call returned after …)"}
    assert flags(row) == ["wrong@large", "property", "implausible", "escaped-stream", "host-sync"]
    assert trust({"status": "ok", "agree": "False"}) == "wrong"
