"""`upbench run` exits 1 when a cell disagrees with its reference beyond tolerance, unless the suite declares
that disagreement expected with ``[[expect]] where = {…} reason = "…"`` (the reason is shown in the report)."""

from __future__ import annotations

import json

from test_cli import SMOKE_ARGS

SUITE = ('[suite]\nmetrics = ["accuracy"]\n[axes]\nC = 4\nH = 3\n[[op]]\nname = "fake-scale"\n'
         'impls = ["wrong", "good"]\n')


def test_disagreement_fails_the_run(run_cli, tmp_path, fake_plugin):
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    code, _, err = run_cli("run", "--suite", suite, "--out", tmp_path / "r", *SMOKE_ARGS)
    assert code == 1, err
    assert "1 cells disagree with their reference beyond tolerance" in err and "[[expect]]" in err
    rows = json.loads((tmp_path / "r" / "results.json").read_text())["rows"]
    assert [(r["impl"], r["status"], r["agree"]) for r in rows] == [("wrong", "ok", False), ("good", "ok", True)]


def test_expected_disagreement_passes_with_its_reason_in_the_report(run_cli, tmp_path, fake_plugin):
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE + '[[expect]]\nwhere = {impl = "wrong"}\nreason = "known: 1 % off by design"\n')
    code, _, err = run_cli("run", "--suite", suite, "--out", tmp_path / "r", *SMOKE_ARGS)
    assert code == 0, err
    assert "expected: known: 1 % off by design" in (tmp_path / "r" / "report.md").read_text()


def test_expect_needs_a_reason(run_cli, tmp_path, fake_plugin):
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE + '[[expect]]\nwhere = {impl = "wrong"}\n')
    code, _, err = run_cli("run", "--suite", suite, "--out", tmp_path / "r", *SMOKE_ARGS)
    assert code == 2 and err.count("\n") == 1 and "[[expect]] needs where" in err, err
    assert not (tmp_path / "r").exists()
