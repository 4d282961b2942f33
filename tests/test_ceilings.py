import json

from upbench import ceilings


def test_ceilings_are_probed_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("UPBENCH_CACHE_DIR", str(tmp_path))
    calls = []
    monkeypatch.setattr(ceilings, "copy_gbps", lambda d, n: calls.append("copy") or 10.0)
    monkeypatch.setattr(ceilings, "matmul_gflops", lambda d, t, n: calls.append("mm") or 100.0)
    first = ceilings.ceilings("cpu", "float32")
    again = ceilings.ceilings("cpu", "float32")
    assert first == again and first["copy_GBps"] == 10.0 and calls == ["copy", "mm"]
    (cached,) = tmp_path.glob("ceilings-*.json")
    assert json.loads(cached.read_text())["matmul_GFLOPs"] == 100.0


def test_probes_measure_something_real():
    assert ceilings.copy_gbps("cpu", 8 << 20) > 0.1
    assert ceilings.matmul_gflops("cpu", "float32", 128) > 0.01
    cal = ceilings.calibrate("cpu")
    assert cal["copy_ms"] > 0 and cal["matmul_ms"] > 0
