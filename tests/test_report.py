"""The report from a small stored results file: tables, figures that are real PNGs, failed cells shown."""

import shutil
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd

from upbench.report.scaling import _verdict, fits
from upbench.results import load_run

DATA = Path(__file__).parent / "data" / "tiny-run"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_structure_and_figures(run_cli, tmp_path):
    out = tmp_path / "rep.md"
    code, _, err = run_cli("report", DATA, "--out", out)
    assert code == 0, err
    text = out.read_text()
    for s in ("# upbench report — `tiny`", "## Suite `tiny`", "### sapa", "### bilinear", "### fake-scale",
              "Latency (ms, median) by impl", "Peak memory (MiB) by impl", "### Figures", "**Scaling**",
              "### Skipped and failed cells", "**Failed cells**", "RuntimeError: kernel exploded",
              "impl fwd-only is forward-only", "## Environment", "## Reproduce", "upbench run --suite"):
        assert s in text, s
    figs = sorted((tmp_path / "rep-figs").glob("*.png"))
    assert {f.name for f in figs} >= {"tiny-latency.png", "tiny-mem-res.png", "tiny-mem-k.png", "tiny-roofline.png"}
    for f in figs:
        assert f.read_bytes()[:8] == PNG_MAGIC
        img = mpimg.imread(f)
        assert img.shape[0] > 200 and img.shape[1] > 300
        assert f"(rep-figs/{f.name})" in text  # embedded in the markdown


def test_two_runs_side_by_side(run_cli, tmp_path):
    other = tmp_path / "gpu-like"
    shutil.copytree(DATA, other)
    code, _, err = run_cli("report", DATA, other, "--out", tmp_path / "both.md")
    assert code == 0, err
    text = (tmp_path / "both.md").read_text()
    assert "## Environment — tiny-run" in text and "## Environment — gpu-like" in text
    assert "| run " in text  # the run is a column once it varies


def test_several_runs_need_an_output_file(run_cli):
    code, _, err = run_cli("report", DATA, DATA)
    assert code == 2 and "give --out" in err


def test_scaling_fit_and_diagnosis():
    df, _ = load_run(DATA)
    ok = df[df["status"] == "ok"]
    fs = fits(ok)
    assert fs and all(f.points == 3 for f in fs)
    assert _verdict(1.0, 1.0) == "linear"
    assert "launch" in _verdict(0.6, 0.05) and "super-linear" in _verdict(1.6, 1.5)
    synthetic = pd.DataFrame({"op": "x", "impl": "y", "pass": "fwd", "stages": None, "B": 1, "H": [8, 16, 32, 64],
                              "W": None, "s": 2, "latency_median_ms": [1.0, 4.0, 16.0, 64.0]})
    (f,) = fits(synthetic)
    assert abs(f.slope - 1.0) < 1e-9


def test_scaling_gives_no_diagnosis_from_noisy_rows():
    base = {"op": "x", "impl": "y", "pass": "fwd", "stages": None, "B": 1, "H": [8, 16, 32, 64], "W": None, "s": 2,
            "latency_median_ms": [1.0, 1.0, 16.0, 640.0]}
    (f,) = fits(pd.DataFrame({**base, "latency_noise": ["noisy", "contended", "noisy", "stable"]}))
    assert f.verdict.startswith("no diagnosis: 3 of 4")
    (f,) = fits(pd.DataFrame({**base, "latency_noise": ["noisy", "stable", "stable", "stable"]}))
    assert "tentative: 1 of 4" in f.verdict


def test_numbers_print_plainly():
    from upbench.report.tables import _fmt

    assert _fmt(100.0) == "100" and _fmt(11870.4, ".4g") == "11870" and _fmt(0.00123) == "0.00123"
    assert _fmt(1.5) == "1.5" and _fmt(2e-9, ".1e") == "2.0e-09" and _fmt(None) == "–"


def test_busy_run_is_warned_and_overridden_description_marked(run_cli, tmp_path):
    import json

    run = tmp_path / "busy"
    shutil.copytree(DATA, run)
    doc = json.loads((run / "results.json").read_text())
    doc["meta"]["env"]["load"] = {"before": {"load1": 6.2, "cores": 2}, "after": {"load1": 0.1, "cores": 2}}
    doc["meta"]["suite"]["description"] = "Every operator at three sizes."
    doc["meta"]["command"] = "upbench run --suite tiny --op sapa --set H=8"
    doc["rows"][0]["latency_noise"] = "contended"
    (run / "results.json").write_text(json.dumps(doc))
    code, _, err = run_cli("report", run, "--out", tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert code == 0, err
    assert "Warning — busy: the machine was busy (before: load average 6.2 on 2 cores)" in text
    assert "1 row(s) had most samples preempted" in text
    assert "this run overrode it with --op, --set" in text


def test_report_refuses_rows_without_the_schema_columns(run_cli, tmp_path):
    import json

    (tmp_path / "results.json").write_text(json.dumps({"schema": 1, "meta": {}, "rows": [{"x": 1}]}))
    code, _, err = run_cli("report", tmp_path / "results.json", "--out", tmp_path / "r.md")
    assert code == 2 and "rows lack the column(s) suite" in err and not (tmp_path / "r.md").exists()


def test_line_figures_give_every_series_its_own_colour():
    from upbench.report.plots import _style

    styles = {(_style(i)["color"], _style(i)["marker"]) for i in range(60)}
    assert len(styles) == 60 and len({_style(i)["color"] for i in range(20)}) == 20
