"""Bad inputs caught up front: exit 2, one line, nothing written, before anything is measured."""

import json
import os
import stat

import pytest

SUITE = """
[suite]
metrics = ["accuracy"]
[axes]
C = 4
H = 4
[[op]]
name = "nearest"
"""


def _one_line_usage_error(run_cli, *argv):
    code, out, err = run_cli(*argv)
    assert code == 2 and err.startswith("upbench: error: ") and err.count("\n") == 1, (code, err)
    return err


def _placed(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    return blocker


@pytest.mark.parametrize("out,msg", [("a-file", "is a file"), ("a-file/sub", "lies under the file"),
                                     ("/sys/upbench-out", "is not writable")])
def test_run_out_that_cannot_be_a_directory(run_cli, tmp_path, monkeypatch, out, msg):
    monkeypatch.chdir(tmp_path)
    _placed(tmp_path)
    (tmp_path / "s.toml").write_text(SUITE)
    err = _one_line_usage_error(run_cli, "run", "--suite", "s.toml", "--out", out)
    assert msg in err and sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "s.toml"]


def test_report_compare_merge_out_checked_before_writing(run_cli, tmp_path):
    from pathlib import Path

    data = Path(__file__).parent / "data" / "tiny-run"
    blocker = _placed(tmp_path)
    assert "lies under the file" in _one_line_usage_error(run_cli, "report", data, "--out", blocker / "r.md")
    assert "is a directory" in _one_line_usage_error(run_cli, "report", data, "--out", tmp_path)
    assert "lies under the file" in _one_line_usage_error(run_cli, "compare", data, data, "--out", blocker / "c.md")
    assert "is a file" in _one_line_usage_error(run_cli, "merge", data, "--out", blocker)
    assert "not writable" in _one_line_usage_error(run_cli, "compare", data, data, "--out", "/sys/x/c.md")


@pytest.mark.parametrize("text,msg", [
    ('[suite]\nnmae = "x"\n', "unknown key(s) in [suite]: nmae"),
    ('[timing]\nbudget_s = "abc"\n', "budget_s = 'abc' must be float"),
    ("[timing]\nbudget_s = -1.0\n", "budget_s = -1.0 must be > 0"),
    ("[timing]\nmin_samples = 2.5\n", "min_samples = 2.5 must be int"),
    ("[timing]\nwarmup_s = -0.1\n", "warmup_s = -0.1 must be ≥ 0"),
    ("[timing]\nmax_samples = 2\n", "need 2 ≤ min_samples ≤ max_samples"),
    ("[timing]\nmin_samples = 1\n", "need 2 ≤ min_samples ≤ max_samples"),
    ('[suite]\nmetrics = "memory"\n', "metrics = 'memory' must be a list of strings"),
    ('[suite]\nname = "../escape"\n', "is not a plain name"),
    ('[suite]\nname = "a/b"\n', "is not a plain name"),
])
def test_bad_suite_tables(run_cli, tmp_path, monkeypatch, text, msg):
    monkeypatch.chdir(tmp_path)
    body = SUITE.replace('[suite]\nmetrics = ["accuracy"]\n', "")
    (tmp_path / "s.toml").write_text(text + body if "[suite]" in text else '[suite]\nmetrics = ["accuracy"]\n' +
                                     text + body)
    err = _one_line_usage_error(run_cli, "run", "--suite", "s.toml")
    assert msg in err and not (tmp_path / "reports").exists()


def test_non_utf8_suite(run_cli, tmp_path):
    f = tmp_path / "s.toml"
    f.write_bytes(SUITE.encode() + b'# caf\xe9\n')
    assert "is not UTF-8" in _one_line_usage_error(run_cli, "run", "--suite", f)


def test_unequal_cy_on_an_operator_that_needs_cy_equal_c_is_rejected(run_cli, tmp_path):
    err = _one_line_usage_error(run_cli, "run", "--suite", "smoke", "--op", "sapa-i", "--set", "Cy=4",
                                "--out", tmp_path / "r")
    assert "needs Cy == C" in err and not (tmp_path / "r").exists()


def _with_impl(monkeypatch, fake_plugin, name, make):
    from upbench import Impl, registry

    op = registry.get("fake-scale")
    monkeypatch.setattr(type(op), "impls", (*type(op).impls, Impl(name, make, "test")))


@pytest.mark.parametrize("name,value,msg", [
    ("nan", float("nan"), "non-finite output: 64 of 64 values of impl nan are NaN or inf"),
    ("inf", float("inf"), "non-finite output"),
    ("none", None, "impl none returned NoneType; an impl's callable returns one floating-point torch.Tensor"),
])
def test_impl_outputs_break_the_contract(run_cli, tmp_path, monkeypatch, fake_plugin, name, value, msg):
    import torch

    def make(case, m):
        return lambda x: None if value is None else torch.full((1, case.C, 2 * case.H, 2 * case.H), value)
    _with_impl(monkeypatch, fake_plugin, name, make)
    (tmp_path / "s.toml").write_text('[suite]\nmetrics = ["accuracy", "latency"]\n[timing]\nbudget_s = 0.05\n'
                                     '[axes]\nC = 4\nH = 2\n[[op]]\nname = "fake-scale"\nimpls = ["good", '
                                     f'"{name}"]\n')
    code, _, _ = run_cli("run", "--suite", tmp_path / "s.toml", "--out", tmp_path / "r", "--no-progress")
    rows = {r["impl"]: r for r in json.loads((tmp_path / "r" / "results.json").read_text())["rows"]}
    assert code == 1 and rows["good"]["status"] == "ok"
    assert rows[name]["status"] == "failed" and msg in rows[name]["reason"], rows[name]["reason"]


def test_results_files_are_readable_like_figures_and_one_thread_is_its_own_class(run_cli, tmp_path):
    (tmp_path / "s.toml").write_text(SUITE.replace('["accuracy"]', '["latency"]\n[timing]\nbudget_s = 0.05')
                                     .replace("H = 4", "H = 4\nthreads = 1"))
    assert run_cli("run", "--suite", tmp_path / "s.toml", "--out", tmp_path / "r", "--no-progress")[0] == 0
    mask = os.umask(0)
    os.umask(mask)
    for f in ("results.json", "results.csv", "report.md"):
        assert stat.S_IMODE((tmp_path / "r" / f).stat().st_mode) == 0o666 & ~mask, f
    (row,) = json.loads((tmp_path / "r" / "results.json").read_text())["rows"]
    assert row["device_class"].endswith("/ 1 threads") and row["latency_noise"] in ("stable", "noisy", "contended")
    assert row["thp_mem_alloc"] and row["minor_faults_per_call"] >= 0 and row["latency_preempted"] >= 0


def test_list_columns_line_up(run_cli):
    code, out, _ = run_cli("list")
    starts = {line.index(" cpu:") for line in out.splitlines() if line.startswith("  ") and " cpu:" in line}
    assert code == 0 and len(starts) == 1, starts
