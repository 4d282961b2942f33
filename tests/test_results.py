import json
import os

import pytest

from upbench import results
from upbench.errors import UsageError
from upbench.metrics import NAMES


def test_write_and_load_round_trip(tmp_path):
    rows = [{"op": "x", "impl": "y", "status": "ok", "latency_median_ms": 1.5, "err_max_rel": float("nan")}]
    results.write_run(tmp_path, rows, {"suite": {"name": "t"}})
    df, meta = results.load_run(tmp_path)
    assert list(df.columns[: len(NAMES)]) == list(NAMES)
    assert df.loc[0, "latency_median_ms"] == 1.5 and meta["suite"]["name"] == "t"
    assert (tmp_path / "results.csv").read_text().startswith("suite,cell_id,op,impl,pass")
    assert json.loads((tmp_path / "results.json").read_text())["rows"][0]["err_max_rel"] is None


def test_atomic_write_keeps_the_old_file_when_the_write_dies(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    results.atomic_write(target, "old complete content")

    def boom(*a, **k):
        raise KeyboardInterrupt  # Ctrl-C between writing the temporary file and the rename

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        results.atomic_write(target, "new content that never lands")
    assert target.read_text() == "old complete content"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left behind


@pytest.mark.parametrize("content,msg", [
    ("{not json", "not valid JSON"),
    ('{"rows": []}', "not an upbench results file"),
    ('{"schema": 99, "rows": []}', "schema 99 but this upbench reads schema 1"),
])
def test_bad_results_files(tmp_path, content, msg):
    (tmp_path / "results.json").write_text(content)
    with pytest.raises(UsageError, match=msg):
        results.load_run(tmp_path)


def test_missing_results(tmp_path):
    with pytest.raises(UsageError, match="no results.json here"):
        results.load_run(tmp_path)
