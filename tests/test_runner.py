"""End to end: the smoke suite through the CLI, and the runner's metrics on the test plugin."""

import json

import pandas as pd

from upbench import results
from upbench.metrics import NAMES


def test_smoke_suite_end_to_end(run_cli, tmp_path):
    code, _, err = run_cli("run", "--suite", "smoke", "--out", tmp_path, "--no-progress")
    assert code == 0, err
    df, meta = results.load_run(tmp_path)
    assert list(df.columns) == list(NAMES)  # every key of every row is a declared column
    assert set(df["status"]) == {"ok"}
    assert meta["status"] == "complete" and meta["env"]["torch"]
    assert meta["command"].startswith("upbench run --suite smoke")
    fwd = df[df["pass"] == "fwd"]
    assert (pd.to_numeric(fwd["peak_mem_bytes"]) > 0).all()
    assert (pd.to_numeric(df["latency_median_ms"]) > 0).all()
    assert df["agree"].astype(bool).all()
    sapa = df[(df["op"] == "sapa") & (df["pass"] == "fwd")].iloc[0]
    assert sapa["macs"] == 1 * (2 * sapa["H"]) * 12 * 9 * (8 + 8) and sapa["flops"] == 2 * sapa["macs"]
    assert all(len(json.loads(s)) == n for s, n in zip(df["latency_samples_ms"], df["latency_n"], strict=True))
    report = (tmp_path / "report.md").read_text()
    for section in ("## sapa", "## nearest", "## bilinear", "Peak memory (MiB) by impl", "## Environment",
                    "## Reproduce", "upbench run --suite smoke"):
        assert section in report
    # the report regenerates identically from the stored results
    (tmp_path / "report.md").unlink()
    code, out, _ = run_cli("report", tmp_path)
    assert code == 0 and (tmp_path / "report.md").read_text() == report


def _run(run_cli, tmp_path, impls, passes='["fwd"]', metrics='["accuracy"]'):
    suite = tmp_path / "s.toml"
    suite.write_text(f'[suite]\nmetrics = {metrics}\npasses = {passes}\n[axes]\nC = 3\nH = [4, 5]\nW = 6\n'
                     f'[[op]]\nname = "fake-scale"\nimpls = {json.dumps(impls)}\n')
    out = tmp_path / "r"
    code, _, err = run_cli("run", "--suite", suite, "--out", out, "--no-progress")
    df, _ = results.load_run(out)
    return code, df


def test_agreement_catches_wrong_and_border_only_bugs(run_cli, tmp_path, fake_plugin):
    code, df = _run(run_cli, tmp_path, ["good", "wrong", "border-bug"], passes='["fwd", "bwd"]')
    assert code == 1  # a disagreement is recorded, every cell still runs, and the run fails (no [[expect]])
    by = {(r.impl, r["pass"]): r for _, r in df.iterrows()}
    assert by[("good", "fwd")]["agree"] and by[("good", "bwd")]["agree"]
    assert not by[("wrong", "fwd")]["agree"]
    bb = by[("border-bug", "fwd")]
    assert not bb["agree"] and bb["err_border_max_rel"] > 0.1 and bb["err_interior_max_rel"] < 1e-6
    # gradients: the scale's gradient is wrong for "wrong" (x·1.01) and right for "good"
    assert not by[("wrong", "bwd")]["agree"]


def test_forward_only_impl_is_skipped_for_backward(run_cli, tmp_path, fake_plugin):
    code, df = _run(run_cli, tmp_path, ["fwd-only"], passes='["fwd", "bwd"]')
    assert code == 0
    assert list(df["status"]) == ["ok", "skipped", "ok", "skipped"]
    assert set(df.loc[df["status"] == "skipped", "reason"]) == {"unsupported: impl fwd-only is forward-only"}


def test_params_and_macs_come_from_the_plugin(run_cli, tmp_path, fake_plugin):
    _, df = _run(run_cli, tmp_path, ["good"], metrics='["memory"]')
    r = df.iloc[0]
    assert r["params"] == 3 and r["macs"] == 3 * 8 * 12
    # x (1,3,4,6) → rows repeated (1,3,8,6) → columns repeated (1,3,8,12) → × scale: the last two are live
    # together at the multiply, so the peak is twice the output's bytes
    assert r["peak_mem_bytes"] == 2 * (3 * 8 * 12 * 4)


def test_determinism_and_ideal_footprint(run_cli, tmp_path, fake_plugin):
    _, df = _run(run_cli, tmp_path, ["good", "nondeterministic"], metrics='["determinism", "memory"]')
    by = {r.impl: r for _, r in df[df["H"] == 4].iterrows()}
    assert by["good"]["bitwise_repeatable"] and not by["nondeterministic"]["bitwise_repeatable"]
    assert by["good"]["ideal_bytes"] == 3 * 8 * 12 * 4 and by["good"]["peak_over_ideal"] == 2.0


def test_a_metric_returning_an_undeclared_column_fails_its_cell(run_cli, tmp_path, fake_plugin, monkeypatch):
    from dataclasses import replace

    from upbench import metrics, runner

    bad = [replace(m, measure=lambda ctx: {"surprise": 1}) if m.name == "accuracy" else m for m in metrics.METRICS]
    monkeypatch.setattr(runner, "METRICS", tuple(bad))
    code, df = _run(run_cli, tmp_path, ["good"])
    assert code == 1 and set(df["status"]) == {"failed"}
    assert "undeclared column(s) ['surprise']" in df["reason"].iloc[0] and "surprise" not in df.columns
