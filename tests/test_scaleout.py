"""Stable cells, --shard i/n, merge, and the Ray executor on a local 2-CPU cluster."""

import json

import pytest

from upbench import execute, sweeps
from upbench.results import load_run


def _ids(suite="smoke"):
    return [c.id for c in sweeps.expand(sweeps.load(suite))]


def test_cells_are_stable_and_sharding_covers_each_exactly_once():
    cells = sweeps.expand(sweeps.load("accuracy"))
    assert [c.id for c in cells] == [c.id for c in sweeps.expand(sweeps.load("accuracy"))]
    for n in (1, 2, 3, 7):
        parts = [execute.shard(cells, i, n) for i in range(n)]
        ids = [c.id for p in parts for c in p]
        assert sorted(ids) == sorted(c.id for c in cells) and len(ids) == len(set(ids))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("spec", ["3/3", "a/2", "1/0", "-1/2", "1"])
def test_bad_shard_specs(spec, run_cli, tmp_path):
    code, _, err = run_cli("run", "--suite", "smoke", "--shard", spec, "--out", tmp_path / "r")
    assert code == 2 and "--shard" in err and not (tmp_path / "r").exists()


def _shards(run_cli, tmp_path, n, suite="smoke", extra=()):
    for i in range(n):
        code, _, err = run_cli("run", "--suite", suite, "--shard", f"{i}/{n}", "--out", tmp_path / f"s{i}",
                               "--no-progress", *extra)
        assert code == 0, err
    return [tmp_path / f"s{i}" for i in range(n)]


def test_merge_joins_shards_into_the_full_run(run_cli, tmp_path):
    parts = _shards(run_cli, tmp_path, 3)
    code, _, err = run_cli("merge", *parts, "--out", tmp_path / "all")
    assert code == 0, err
    df, meta = load_run(tmp_path / "all")
    assert list(df["cell_id"]) == _ids()  # every cell once, in sweep order
    assert len(meta["shards"]) == 3 and (tmp_path / "all" / "report.md").exists()
    code, _, _ = run_cli("report", tmp_path / "all")
    assert code == 0


def test_merge_refuses_incomplete_duplicated_or_mismatched(run_cli, tmp_path):
    parts = _shards(run_cli, tmp_path, 3)
    code, _, err = run_cli("merge", parts[0], parts[1], "--out", tmp_path / "m1")
    assert code == 1 and "missing shard(s) [2] of 3" in err and not (tmp_path / "m1").exists()
    code, _, err = run_cli("merge", parts[0], parts[1], parts[2], parts[2], "--out", tmp_path / "m2")
    assert code == 1 and "given twice" in err and not (tmp_path / "m2").exists()
    # a shard whose results lost a row
    doc = json.loads((parts[1] / "results.json").read_text())
    doc["rows"].pop()
    (parts[1] / "results.json").write_text(json.dumps(doc))
    code, _, err = run_cli("merge", *parts, "--out", tmp_path / "m3")
    assert code == 1 and "1 of" in err and "cells missing" in err
    other = _shards(run_cli, tmp_path / "o", 3, extra=("--set", "C=4"))
    code, _, err = run_cli("merge", parts[0], other[1], other[2], "--out", tmp_path / "m4")
    assert code == 2 and "merge shards of one `upbench run` command" in err
    code, _, err = run_cli("merge", tmp_path / "o" / "s0", "--out", tmp_path / "m5", "--force")
    assert code == 1


def test_ray_executor_matches_a_local_run(run_cli, tmp_path):
    pytest.importorskip("ray")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        code, _, err = run_cli("run", "--suite", "smoke", "--executor", "ray", "--out", tmp_path / "ray",
                               "--no-progress")
        assert code == 0, err
    finally:
        ray.shutdown()
    code, _, err = run_cli("run", "--suite", "smoke", "--out", tmp_path / "local", "--no-progress")
    assert code == 0, err
    r, rmeta = load_run(tmp_path / "ray")
    lo, _ = load_run(tmp_path / "local")
    assert list(r["cell_id"]) == list(lo["cell_id"]) and list(r.columns) == list(lo.columns)
    assert set(r["status"]) == {"ok"} and rmeta["executor"] == "ray"
    assert r["device_class"].notna().all()


def test_executor_ray_without_ray_says_how_to_install(run_cli, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    code, _, err = run_cli("run", "--suite", "smoke", "--executor", "ray", "--out", tmp_path / "r")
    assert code == 2 and "pip install 'upbench[ray]'" in err and not (tmp_path / "r").exists()
