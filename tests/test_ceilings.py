import json

import pytest

from upbench import ceilings

QUIET = {"load1": 0.0, "cores": 2}
BUSY = {"load1": 6.0, "cores": 2}


@pytest.fixture
def probes(tmp_path, monkeypatch):
    """Fake probes returning queued values; the cache in tmp_path; no pauses."""
    monkeypatch.setenv("UPBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(ceilings, "_unkept", {})
    monkeypatch.setattr(ceilings.time, "sleep", lambda s: None)
    queue = {"copy": [], "mm": []}
    calls = []

    def take(kind):
        calls.append(kind)
        return queue[kind].pop(0) if queue[kind] else 10.0
    monkeypatch.setattr(ceilings, "copy_gbps", lambda d, n: take("copy"))
    monkeypatch.setattr(ceilings, "matmul_gflops", lambda d, t, n: take("mm"))
    monkeypatch.setattr(ceilings, "matmul_ladder",
                        lambda d, t, n: {n: [take("mm") for _ in range(ceilings.PROBES)]})
    return queue, calls


def test_ceilings_are_the_robust_best_of_repeated_probes_kept_once(probes, monkeypatch, tmp_path):
    queue, calls = probes
    monkeypatch.setattr(ceilings, "machine_load", lambda: QUIET)
    queue["copy"] += [10.0, 9.5, 9.8]
    queue["mm"] += [100.0, 98.0, 99.0]
    said = []
    first = ceilings.ceilings("cpu", "float32", say=said.append)
    again = ceilings.ceilings("cpu", "float32")
    assert first == again and first["copy_GBps"] == 10.0 and first["matmul_GFLOPs"] == 100.0
    assert calls == ["copy"] * 3 + ["mm"] * 3 and "probing" in said[0]  # a long probe says so
    (kept,) = tmp_path.glob("ceilings-*.json")
    assert json.loads(kept.read_text())["probed_at"] == first["probed_at"]


def test_a_probe_under_load_is_retried_and_never_kept(probes, monkeypatch, tmp_path):
    _, calls = probes
    monkeypatch.setattr(ceilings, "machine_load", lambda: BUSY)
    got = ceilings.ceilings("cpu", "float32", say=lambda s: None)
    assert "load average 6" in got["not_kept"] and len(calls) == 2 * 6  # tried twice
    assert not list(tmp_path.glob("ceilings-*.json"))
    assert ceilings.ceilings("cpu", "float32") is got  # this process does not probe again


def test_a_kept_ceiling_is_raised_by_a_better_probe_never_lowered(probes, monkeypatch):
    queue, _ = probes
    monkeypatch.setattr(ceilings, "machine_load", lambda: QUIET)
    ceilings.ceilings("cpu", say=lambda s: None)  # 10 GB/s, 10 GFLOP/s
    queue["copy"] += [5.0, 5.0, 5.0]
    queue["mm"] += [20.0, 20.0, 20.0]
    got = ceilings.ceilings("cpu", reprobe=True, say=lambda s: None)
    assert got["copy_GBps"] == 10.0 and got["matmul_GFLOPs"] == 20.0
    assert ceilings.ceilings("cpu") == got


def test_robust_best_needs_a_second_probe_to_confirm():
    assert ceilings.robust_best([10.0, 9.5, 30.0]) == 10.0  # a lone outlier is not the ceiling
    assert ceilings.robust_best([10.0, 5.0, 1.0]) == 5.0  # no two agree: the median
    assert ceilings.spread([1.0, 1.0, 2.0]) == 1.0


def test_a_row_above_a_roof_reprobes_and_names_its_ceiling():
    asked = []

    def get(device, dtype, reprobe=False):
        asked.append(reprobe)
        return ({"matmul_GFLOPs": 1.0, "copy_GBps": 1.0, "key": "k", "probed_at": "old"} if not reprobe else
                {"matmul_GFLOPs": 100.0, "copy_GBps": 100.0, "key": "k", "probed_at": "new"})
    row = {"latency_median_ms": 1.0, "flops": 2e7, "min_bytes": 1e7}  # 20 GFLOP/s, 10 GB/s
    cols = ceilings.roof_columns(row, "cpu", "float32", "fwd", get=get)
    assert asked == [False, True] and cols["pct_compute_roof"] == pytest.approx(20.0)
    assert cols["pct_bw_roof"] == pytest.approx(10.0) and cols["roof_probed_at"] == "new"


def test_matmul_ladder_climbs_while_affordable_and_the_best_size_is_the_ceiling(monkeypatch):
    rate = {256: 40.0, 512: 120.0, 1024: 190.0, 2048: 150.0}  # a BLAS peaks past some size
    asked = []

    def gflops(d, t, n):
        asked.append(n)
        return rate[n] if t == "float32" else 1.0
    monkeypatch.setattr(ceilings, "matmul_gflops", gflops)
    ladder = ceilings.matmul_ladder("cpu", "float32", 2048, budget_s=1.0)
    assert sorted(ladder) == [256, 512, 1024, 2048] and ceilings.ladder_best(ladder) == (1024, 190.0)
    # one slow quick step no longer ends the climb: the next size is judged by the best rate at this one
    assert ceilings.matmul_ladder("cpu", "float32", 2048, budget_s=0.05).keys() == {256, 512, 1024}
    asked.clear()
    assert list(ceilings.matmul_ladder("cpu", "float16", 2048)) == [256]  # 1 GFLOP/s: the smallest size only
    assert asked == [256] * ceilings.PROBES


def test_probes_measure_something_real():
    assert ceilings.copy_gbps("cpu", 8 << 20) > 0.1
    assert ceilings.matmul_gflops("cpu", "float32", 128) > 0.01
    cal = ceilings.calibrate("cpu", say=lambda s: None)
    assert cal["copy_ms"] > 0 and cal["matmul_ms"] > 0 and cal["copy_spread"] >= 0 and "load1" in cal["load"]
