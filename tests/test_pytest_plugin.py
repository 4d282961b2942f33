import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_suite_cells_run_as_pytest_benchmarks(tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text('[axes]\nC = 4\nH = 4\nK = [3, 4]\n[[op]]\nname = "sapa"\nimpls = ["lean"]\n'
                     '[[op]]\nname = "bilinear"\n')
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", str(ROOT / "benchmarks"), "--benchmark-only",
         f"--benchmark-json={out}", "--benchmark-min-rounds=3", "--benchmark-max-time=0.01",
         f"--benchmark-storage={tmp_path / 'storage'}", "--benchmark-autosave", "-p", "no:cacheprovider"],
        capture_output=True, text=True, env={"UPBENCH_BENCH_SUITE": str(suite), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "K=4 is even" in proc.stdout  # upbench's skip reason, as a pytest skip
    benches = json.loads(out.read_text())["benchmarks"]
    assert len(benches) == 2
    info = {b["extra_info"]["op"]: b["extra_info"] for b in benches}
    assert info["sapa"]["macs"] == 8 * 8 * 9 * (4 + 4) and info["sapa"]["agree"] is True
    assert info["sapa"]["agree_worst_input"] and info["bilinear"]["property_check"] == "ok"  # the trust checks
    assert info["bilinear"]["flops"] == 2 * 4 * 4 * 8 * 8
    assert list((tmp_path / "storage").rglob("*.json"))  # --benchmark-autosave wrote its file
