"""The regression gate: verdicts on synthetic samples, exit codes, and real CPU runs slowed on purpose."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from upbench.compare import Thresholds, classify, compare, load_thresholds
from upbench.instructions import unavailable
from upbench.results import load_run, write_run


def _noise(n, median, rel, seed):
    return median * (1 + rel * np.random.default_rng(seed).standard_normal(n))


def test_ten_percent_slowdown_with_low_noise_is_slower():
    base, new = _noise(30, 1.0, 0.01, 1), _noise(30, 1.10, 0.01, 2)
    assert classify(base, new, 0.05)[0] == "SLOWER"


def test_identical_distributions_are_same():
    for seed in range(10):  # never cries wolf on noise alone
        base, new = _noise(30, 1.0, 0.01, seed), _noise(30, 1.0, 0.01, seed + 100)
        assert classify(base, new, 0.05)[0] == "SAME"


def test_wide_overlapping_noise_is_ambiguous():
    base, new = _noise(8, 1.0, 0.3, 3), _noise(8, 1.08, 0.3, 4)
    assert classify(base, new, 0.05)[0] == "AMBIGUOUS"


def test_faster_and_small_effects():
    assert classify(_noise(30, 1.0, 0.01, 5), _noise(30, 0.8, 0.01, 6), 0.05)[0] == "FASTER"
    assert classify(_noise(30, 1.0, 0.005, 7), _noise(30, 1.02, 0.005, 8), 0.05)[0] == "SAME"  # below the effect


def test_threshold_rules_last_match_wins(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text('default = 0.05\n[[rule]]\nop = "sapa*"\nthreshold = 0.2\n[[rule]]\nop = "sapa"\nimpl = "lean"\n'
                 'threshold = 0.1\n')
    t = load_thresholds(str(f), None)
    assert t.for_row("x", "bilinear", "torch") == 0.05
    assert t.for_row("x", "sapa-b", "lean") == 0.2 and t.for_row("x", "sapa", "lean") == 0.1
    assert Thresholds(0.3).for_row("a", "b", "c") == 0.3


def _run_dir(tmp_path, name, rows, device_cpu="AMD EPYC"):
    d = tmp_path / name
    write_run(d, rows, {"env": {"cpu_model": device_cpu, "torch_threads": 2, "gpu": {"devices": []}},
                        "calibration": {"cpu": {"copy_ms": 2.0, "matmul_ms": 2.0}}})
    return d


def _row(cid, samples, status="ok", agree=True, impl="lean"):
    return {"suite": "s", "cell_id": cid, "op": "sapa", "impl": impl, "pass": "fwd", "device": "cpu", "H": 8,
            "status": status, "reason": "" if status == "ok" else "RuntimeError: boom", "agree": agree,
            "err_max_rel": 1e-6 if agree else 1.0, "err_tol": 1e-4,
            "latency_samples_ms": json.dumps(list(samples))}


def test_cli_exit_codes_and_one_sided_rows(run_cli, tmp_path):
    same = _noise(20, 1.0, 0.01, 1)
    base = _run_dir(tmp_path, "base", [_row("a", same), _row("b", same), _row("gone", same)])
    new_ok = _run_dir(tmp_path, "ok", [_row("a", _noise(20, 1.0, 0.01, 2)), _row("b", same),
                                       _row("added", same)])
    code, out, _ = run_cli("compare", base, new_ok)
    assert code == 0 and "ONLY_BASE" in out and "ONLY_NEW" in out and "SAME" in out
    slow = _run_dir(tmp_path, "slow", [_row("a", _noise(20, 1.2, 0.01, 3)), _row("b", same)])
    code, out, _ = run_cli("compare", base, slow, "--out", tmp_path / "cmp.md")
    assert code == 1 and "SLOWER" in out and (tmp_path / "cmp.md").read_text() == out.rstrip("\n") + "\n"
    failed = _run_dir(tmp_path, "failed", [_row("a", same, status="failed"), _row("b", same, agree=False)])
    code, out, _ = run_cli("compare", base, failed)
    assert code == 1 and "FAILED" in out and "WRONG" in out
    noisy = _run_dir(tmp_path, "noisy", [_row("a", _noise(6, 1.05, 0.3, 4)), _row("b", same)])
    assert run_cli("compare", base, noisy)[0] == 0
    assert run_cli("compare", base, noisy, "--strict")[0] == 3


def test_cli_refuses_other_device_classes_and_bad_files(run_cli, tmp_path):
    base = _run_dir(tmp_path, "base", [_row("a", [1.0, 1.0, 1.0])])
    other = _run_dir(tmp_path, "other", [_row("a", [1.0, 1.0, 1.0])], device_cpu="Intel Xeon")
    code, _, err = run_cli("compare", base, other)
    assert code == 2 and "device classes differ" in err and err.count("\n") == 1
    assert run_cli("compare", base, other, "--allow-cross-device")[0] == 0
    (tmp_path / "junk.json").write_text("{")
    code, _, err = run_cli("compare", tmp_path / "junk.json", base)
    assert code == 2 and "not valid JSON" in err
    code, _, err = run_cli("compare", "baseline:nope", base)
    assert code == 2 and "no baseline" in err


INSTR_SUITE = """
[suite]
metrics = ["instructions"]
[axes]
C = 32
H = 16
threads = 1
[[op]]
name = "fake-scale"
impls = ["good", "slow"]
"""


@pytest.mark.skipif(bool(unavailable()), reason=f"instruction counts: {unavailable()}")
def test_instruction_gate_ignores_a_busy_neighbour_and_catches_a_30_percent_slowdown(run_cli, tmp_path, monkeypatch,
                                                                                      fake_plugin):
    # Two runs, each one valgrind child counting both cells, with a busy neighbour throughout: between them
    # `good` is unchanged (two independent runs must agree) and `slow` does 30 % more work (must be caught).
    suite = tmp_path / "g.toml"
    suite.write_text(INSTR_SUITE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UPBENCH_FAKE_SLOW_FACTOR", "1")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # holds a core for the whole test
    try:
        assert run_cli("run", "--suite", suite, "--out", "base", "--no-progress")[0] == 0
        monkeypatch.setenv("UPBENCH_FAKE_SLOW_FACTOR", "1.3")
        assert run_cli("run", "--suite", suite, "--out", "new", "--no-progress")[0] == 0
        code, out, _ = run_cli("compare", "base", "new")
    finally:
        hog.kill()
        hog.wait()
    assert code == 1 and "SLOWER" in out and "| instructions |" in out, out
    df = compare(str(tmp_path / "base"), str(tmp_path / "new"), load_thresholds(None, None))
    assert dict(zip(df["impl"], df["verdict"], strict=True)) == {"good": "SAME", "slow": "SLOWER"}, out
    assert (df["metric"] == "instructions").all(), out
    new, base = (load_run(tmp_path / d)[0].set_index("impl")["instructions_per_call"] for d in ("new", "base"))
    assert 1.15 < new["slow"] / base["slow"] < 1.45, (new, base)  # 1.3 × the work, plus a call's fixed overhead
    assert abs(new["good"] / base["good"] - 1) < 0.01, (new, base)  # load does not move the count


def test_save_baseline_bad_name_writes_nothing(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("run", "--suite", "smoke", "--out", "r", "--save-baseline", "a/b")
    assert code == 2 and "--save-baseline a/b" in err and not (tmp_path / "r").exists()


def test_copy_of_a_run_compares_same(tmp_path, run_cli):
    d = _run_dir(tmp_path, "a", [_row("x", _noise(10, 1.0, 0.02, 9))])
    shutil.copytree(d, tmp_path / "b")
    code, out, _ = run_cli("compare", d, tmp_path / "b", "--normalise")
    assert code == 0 and "1 SAME" in out


def test_missing_baseline_can_pass_explicitly(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    new = _run_dir(tmp_path, "new", [_row("a", [1.0, 1.0, 1.0])])
    code, _, err = run_cli("compare", "baseline:main", new, "--if-missing", "pass")
    assert code == 0 and "no gate" in err
    assert run_cli("compare", "baseline:main", new)[0] == 2


def test_runs_of_different_suites_or_no_common_cell_are_a_usage_error(run_cli, tmp_path):
    base = _run_dir(tmp_path, "base", [_row("a", [1.0, 1.0, 1.0])])
    other = _run_dir(tmp_path, "other", [{**_row("a", [1.0, 1.0, 1.0]), "suite": "t"}])
    code, out, err = run_cli("compare", base, other)
    assert code == 2 and "different suites" in err and out == ""
    apart = _run_dir(tmp_path, "apart", [_row("z", [1.0, 1.0, 1.0])])
    code, _, err = run_cli("compare", base, apart)
    assert code == 2 and "share no cell" in err
    assert run_cli("compare", base, apart, "--allow-disjoint")[0] == 0


def test_contended_rows_are_never_slower_or_faster(run_cli, tmp_path):
    base = _run_dir(tmp_path, "base", [_row("a", _noise(20, 1.0, 0.01, 1))])
    slow = _run_dir(tmp_path, "slow", [{**_row("a", _noise(20, 50.0, 0.01, 2)), "latency_noise": "contended"}])
    code, out, _ = run_cli("compare", base, slow)
    assert code == 0 and "AMBIGUOUS" in out and "would be SLOWER" in out and "contended" in out
    assert run_cli("compare", base, slow, "--strict")[0] == 3


def _instr_row(cid, per_call, samples_ms):
    return {**_row(cid, samples_ms), "instructions_per_call": per_call,
            "instructions_samples": json.dumps([per_call * (1 + 1e-4 * i) for i in range(5)])}


def test_instructions_decide_when_both_sides_have_them(run_cli, tmp_path):
    base = _run_dir(tmp_path, "base", [_instr_row("a", 1e7, _noise(20, 1.0, 0.01, 1))])
    # Time says 3× slower (a busy neighbour); instructions say unchanged: SAME on instructions.
    busy = _run_dir(tmp_path, "busy", [_instr_row("a", 1e7, _noise(20, 3.0, 0.01, 2))])
    code, out, _ = run_cli("compare", base, busy)
    assert code == 0 and "SAME" in out and "| instructions |" in out and "±2%" in out
    # 5 % more instructions with the same time: SLOWER, through the 2 % instruction threshold.
    more = _run_dir(tmp_path, "more", [_instr_row("a", 1.05e7, _noise(20, 1.0, 0.01, 3))])
    code, out, _ = run_cli("compare", base, more)
    assert code == 1 and "SLOWER" in out
    assert run_cli("compare", base, more, "--instr-threshold", "0.1")[0] == 0
    assert run_cli("compare", base, more, "--instr-threshold", "-1")[0] == 2


def test_normalise_falls_back_to_raw_when_a_calibration_was_unsteady(run_cli, tmp_path):
    base = _run_dir(tmp_path, "base", [_row("a", _noise(20, 1.0, 0.01, 1))])
    new = tmp_path / "new"
    write_run(new, [_row("a", _noise(20, 1.0, 0.01, 2))],
              {"env": {"cpu_model": "AMD EPYC", "torch_threads": 2, "gpu": {"devices": []}},
               "calibration": {"cpu": {"copy_ms": 200.0, "matmul_ms": 2.0, "copy_spread": 99.0,
                                       "busy": "load average 20 on 2 cores"}}})
    code, out, _ = run_cli("compare", base, new, "--normalise")
    assert code == 0 and "1 SAME" in out and "--normalise ignored" in out and "busy machine" in out
    assert "Times raw" in out
    doc = json.loads((new / "results.json").read_text())
    del doc["meta"]["calibration"]["cpu"]["busy"]
    (new / "results.json").write_text(json.dumps(doc))
    code, out, _ = run_cli("compare", base, new, "--normalise")
    assert code == 0 and "--normalise ignored" in out and "copy_spread 99.00 > 0.25" in out


def test_case_labels_print_integers_and_every_verdict_is_documented():
    from pathlib import Path

    import pandas as pd

    from upbench.compare import _label, verdict_table

    assert _label(pd.Series({"K": 5.0, "H": 16.0, "dtype": "float32"})) == "H=16 K=5 dtype=float32"
    assert verdict_table() in (Path(__file__).resolve().parent.parent / "docs" / "ci.md").read_text()
