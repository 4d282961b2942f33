"""The run engine's lifecycle, in real subprocesses: SIGTERM, SIGKILL then --resume, a torn last line, two
runs on one directory, a resume against changed code or suite; and the streamed rows' constant cost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from upbench import rundir
from upbench.results import load_run

PLUGINS = Path(__file__).parent / "plugins"

# Six cells of the test plugin, each ~0.3 s of latency sampling: long enough to interrupt mid-sweep; one
# impl crashes, so statuses are not all "ok".
SUITE = """[suite]
name = "kill"
metrics = ["latency"]
[timing]
budget_s = 0.3
min_samples = 1000000
max_samples = 1000000
warmup_s = 0.0
[axes]
C = 2
H = [2, 3, 4]
[[op]]
name = "fake-scale"
impls = ["good", "crash"]
"""


def _env(plugins: Path = PLUGINS) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(plugins), "UPBENCH_CACHE_DIR": os.environ.get("UPBENCH_CACHE_DIR", "")}


def _start(tmp_path: Path, *args: str, plugins: Path = PLUGINS) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "upbench.cli", "run", *args, "--no-progress"], cwd=tmp_path,
                            env=_env(plugins), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_rows(run: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:  # n = 0: until the run has started measuring
        if (run / rundir.STREAM).exists() and (run / rundir.STREAM).read_text().count("\n") >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no rows streamed in time")


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    p = tmp_path / "kill.toml"
    p.write_text(SUITE)
    return p


def test_sigterm_mid_sweep_exits_143_with_complete_files_and_a_report(tmp_path, suite):
    run = tmp_path / "r"
    proc = _start(tmp_path, "--suite", str(suite), "--out", str(run))
    _wait_rows(run, 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    df, meta = load_run(run)
    assert meta["status"] == "interrupted" and 1 <= len(df) < 6
    assert json.loads((run / "results.json").read_text())["rows"]  # complete JSON, not half a file
    assert (run / "results.csv").read_text().count("\n") == len(df) + 1
    assert "Run interrupted" in (run / "report.md").read_text()
    assert not (run / rundir.LOCK).exists()


def test_a_second_run_on_the_same_out_is_refused_while_the_first_runs(tmp_path, suite, run_cli, fake_plugin):
    suite.write_text(SUITE.replace("budget_s = 0.3", "budget_s = 60.0"))  # outlives the second's start-up
    run = tmp_path / "r"
    first = _start(tmp_path, "--suite", str(suite), "--out", str(run))
    _wait_rows(run, 0, first)
    code, _, err = run_cli("run", "--suite", suite, "--out", run, "--force", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "another upbench run" in err, err
    _, meta = load_run(run)
    assert meta["status"] == "running"  # `report` and friends see a live run, not a finished one
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 143, err  # the first run was left alone by the second, and ends as told
    _, meta = load_run(run)
    assert meta["status"] == "interrupted"


def test_sigkill_then_resume_gives_the_cells_of_an_uninterrupted_run(tmp_path, suite, run_cli, fake_plugin):
    whole = tmp_path / "whole"
    assert run_cli("run", "--suite", suite, "--out", whole, "--no-progress")[0] == 1  # the crash impl fails
    run = tmp_path / "r"
    proc = _start(tmp_path, "--suite", str(suite), "--out", str(run))
    _wait_rows(run, 2, proc)
    proc.kill()
    proc.communicate()
    _, meta = load_run(run)  # what `report` sees: a dead run, not one still running
    assert meta["status"] == "dead" and "--resume" in meta["note"]
    with open(run / rundir.STREAM, "a") as f:  # the machine died mid-write: a torn last line
        f.write('{"cell_id": "torn", "status": "o')
    assert "torn" not in {r["cell_id"] for r in rundir.read_rows(run)}
    res = subprocess.run([sys.executable, "-m", "upbench.cli", "run", "--resume", str(run), "--no-progress"],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert res.returncode == 1, res.stderr
    a, _ = load_run(whole)
    b, bmeta = load_run(run)
    assert list(a["cell_id"]) == list(b["cell_id"]) and list(a["status"]) == list(b["status"])
    assert bmeta["status"] == "complete" and len(bmeta["resumed"]) == 1
    assert "torn" not in (run / rundir.STREAM).read_text()


def test_resume_refuses_a_changed_kernel_source_or_suite(tmp_path):
    plugins = tmp_path / "plugins"
    shutil.copytree(PLUGINS, plugins)  # a copy of the plugin package: its .cu is edited below
    suite = tmp_path / "k.toml"
    suite.write_text(SUITE.replace('impls = ["good", "crash"]', 'impls = ["kernel", "good"]'))
    run = tmp_path / "r"
    proc = _start(tmp_path, "--suite", str(suite), "--out", str(run), plugins=plugins)
    _wait_rows(run, 1, proc)
    proc.kill()
    proc.communicate()
    cu = plugins / "upbench_fakeop" / "scale.cu"
    original = cu.read_text()
    cu.write_text(original + "\n// edited\n")
    resume = [sys.executable, "-m", "upbench.cli", "run", "--resume", str(run)]
    res = subprocess.run(resume, cwd=tmp_path, env=_env(plugins), capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "changed since the run started" in res.stderr and "fake-scale/kernel (impl hash)" in res.stderr
    cu.write_text(original)
    suite.write_text(suite.read_text().replace("H = [2, 3, 4]", "H = [2, 3, 5]"))
    res = subprocess.run(resume, cwd=tmp_path, env=_env(plugins), capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "the suite file changed since the run started" in res.stderr


def test_resume_of_nothing_and_flags_that_do_not_mix(run_cli, tmp_path):
    code, _, err = run_cli("run", "--resume", tmp_path)
    assert code == 2 and "holds no run to resume" in err
    code, _, err = run_cli("run", "--resume", tmp_path, "--suite", "smoke")
    assert code == 2 and "not --suite" in err
    code, _, err = run_cli("run", "--suite", "smoke", "--retry-failed", "--out", tmp_path / "x")
    assert code == 2 and "only with --resume" in err and not (tmp_path / "x").exists()


def test_retry_failed_reruns_only_failed_cells(run_cli, tmp_path, fake_plugin):
    suite = tmp_path / "s.toml"
    suite.write_text('[suite]\nmetrics = ["accuracy"]\n[axes]\nC = 2\nH = [2, 3]\n[[op]]\nname = "fake-scale"\n'
                     'impls = ["good", "crash"]\n')
    assert run_cli("run", "--suite", suite, "--out", tmp_path / "r", "--no-progress")[0] == 1
    before = rundir.read_rows(tmp_path / "r")
    code, _, _ = run_cli("run", "--resume", tmp_path / "r", "--no-progress")
    assert code == 1 and (tmp_path / "r" / rundir.STREAM).read_text().count("\n") == 4  # nothing re-ran
    code, _, _ = run_cli("run", "--resume", tmp_path / "r", "--retry-failed", "--no-progress")
    assert code == 1 and (tmp_path / "r" / rundir.STREAM).read_text().count("\n") == 6  # the 2 failed ones
    df, _ = load_run(tmp_path / "r")
    assert list(df["cell_id"]) == [r["cell_id"] for r in before]


def test_results_are_written_once_at_the_end(run_cli, tmp_path, fake_plugin, monkeypatch):
    from upbench import engine

    calls = []
    real = engine.write_run
    monkeypatch.setattr(engine, "write_run", lambda *a: (calls.append(1), real(*a)))
    suite = tmp_path / "s.toml"
    suite.write_text('[suite]\nmetrics = ["accuracy"]\n[axes]\nC = 2\nH = [2, 3, 4, 5]\n[[op]]\n'
                     'name = "fake-scale"\nimpls = ["good"]\n')
    assert run_cli("run", "--suite", suite, "--out", tmp_path / "r", "--no-progress")[0] == 0
    assert len(calls) == 1


def _stream_cost(run: Path, n: int, syncs: list[str]) -> tuple[list[int], int]:
    """Bytes each append adds to the stream, and the syncs it took, for a run of ``n`` cells."""
    run.mkdir()
    stream = rundir.RowStream(run, sync_every_s=0.0)  # sync every cell: the worst case
    row = {"suite": "s", "status": "ok", "latency_median_ms": 1.25, "agree": True}
    sizes, first = [], len(syncs)
    for i in range(n):
        before = stream.path.stat().st_size
        stream.append({**row, "cell_id": f"{i:012d}"})
        sizes.append(stream.path.stat().st_size - before)
    stream.close()
    return sizes, len(syncs) - first


def test_per_cell_write_cost_does_not_grow_with_the_number_of_cells(tmp_path, monkeypatch):
    syncs: list[str] = []
    monkeypatch.setattr(os, "fsync", lambda fd: syncs.append("sync"))  # counted, not waited for
    small, small_syncs = _stream_cost(tmp_path / "a", 100, syncs)
    large, large_syncs = _stream_cost(tmp_path / "b", 5000, syncs)
    # each cell writes its own line and nothing else: the 5000th append costs what the first did
    assert set(small) == set(large) and len(set(large)) == 1
    assert (small_syncs - 1) / 100 == (large_syncs - 1) / 5000 == 1  # one sync per append, one at the close
    assert len(rundir.read_rows(tmp_path / "b")) == 5000


def test_ctrl_c_during_calibration_is_one_line_and_writes_nothing(run_cli, tmp_path, monkeypatch):
    from upbench import engine

    def interrupted(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_calibrate", interrupted)
    code, _, err = run_cli("run", "--suite", "smoke", "--out", tmp_path / "r", "--no-progress")
    assert code == 130 and err == "upbench: interrupted\n"
    assert not (tmp_path / "r").exists()
