"""CLI behaviour: exit codes, one-line errors, nothing written on bad input."""

import json

import pytest
import torch

SMOKE_ARGS = ("--no-progress",)


@pytest.mark.parametrize("argv,msg", [
    (("run", "--suite", "nope"), "--suite nope: unknown suite; built-in suites: "),
    (("run", "--suite", "smoke", "--op", "nope"), "operator 'nope': not registered"),
    (("run", "--suite", "smoke", "--impl", "nope"), "--impl nope: no selected operator has this impl"),
    (("run", "--suite", "smoke", "--set", "Q=1"), "unknown axis 'Q'"),
    (("run", "--suite", "smoke", "--op", "sapa", "--set", "K=4"), "K=4 is even"),
    (("run", "--suite", "smoke", "--set", "s=0"), "must be ≥ 1"),
    (("run", "--suite", "smoke", "--budget", "0"), "--budget: 0.0 must be > 0"),
    (("run",), "the following arguments are required: --suite"),
    (("frobnicate",), "invalid choice"),
])
def test_usage_errors_are_one_line_exit_2_and_write_nothing(run_cli, tmp_path, argv, msg):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(*argv, "--out", out_dir) if argv[0] == "run" and len(argv) > 1 else run_cli(*argv)
    assert code == 2
    assert err.startswith("upbench: error: ") and err.count("\n") == 1, err
    assert msg in err
    assert "Traceback" not in err
    assert not out_dir.exists()


def test_cuda_without_a_gpu(run_cli, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = run_cli("run", "--suite", "smoke", "--device", "cuda", "--out", tmp_path / "r")
    assert code == 2 and "no CUDA device here" in err and not (tmp_path / "r").exists()


def test_malformed_toml_suite(run_cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[suite\nname = 1")
    code, _, err = run_cli("run", "--suite", bad, "--out", tmp_path / "r")
    assert code == 2 and "malformed TOML" in err and err.count("\n") == 1


def test_report_of_something_that_is_not_a_run(run_cli, tmp_path):
    (tmp_path / "results.json").write_text("[]")
    code, _, err = run_cli("report", tmp_path)
    assert code == 2 and "not an upbench results file" in err


def test_failed_cell_gives_exit_1_and_the_sweep_goes_on(run_cli, tmp_path, fake_plugin):
    suite = tmp_path / "s.toml"
    suite.write_text('[suite]\nmetrics = ["accuracy"]\n[axes]\nC = 4\nH = [3, 4]\n[[op]]\nname = "fake-scale"\n'
                     'impls = ["crash", "good"]\n')
    code, _, err = run_cli("run", "--suite", suite, "--out", tmp_path / "r", *SMOKE_ARGS)
    assert code == 1, err
    rows = json.loads((tmp_path / "r" / "results.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["failed", "ok", "failed", "ok"]
    assert rows[0]["reason"] == "RuntimeError: kernel exploded"
    report = (tmp_path / "r" / "report.md").read_text()
    assert "Failed cells" in report and "kernel exploded" in report


def test_refuses_to_overwrite_results(run_cli, tmp_path):
    (tmp_path / "results.json").write_text("{}")
    code, _, err = run_cli("run", "--suite", "smoke", "--out", tmp_path)
    assert code == 2 and "already holds results" in err


def test_dry_run_lists_cells_and_skip_reasons(run_cli):
    code, out, _ = run_cli("run", "--suite", "smoke", "--dry-run", "--set", "K=3,4", "--op", "sapa")
    assert code == 0
    assert "invalid: K=4 is even" in out and "run" in out


def test_env_and_help(run_cli):
    code, out, _ = run_cli("env", "--json")
    env = json.loads(out)
    assert code == 0 and env["torch"] == torch.__version__ and "reason" in env["gpu"] or env["gpu"]["devices"]
    for cmd in ("list", "run", "report", "env"):
        with pytest.raises(SystemExit) as e:
            run_cli(cmd, "--help")
        assert e.value.code == 0


def test_param_sets_every_selected_operator_that_declares_it(run_cli):
    code, out, err = run_cli("run", "--suite", "smoke", "--op", "nearest,sapa-b", "--dry-run", "--param", "d=4")
    assert code == 0, err  # nearest has no d: it runs as it is, sapa-b gets d=4
    lines = out.splitlines()
    assert all("d=4" in ln for ln in lines if "sapa-b[" in ln) and any("sapa-b[" in ln for ln in lines)
    assert any("nearest[" in ln for ln in lines) and not any("d=" in ln for ln in lines if "nearest[" in ln)
    code, _, err = run_cli("run", "--suite", "smoke", "--dry-run", "--param", "zzz=1")
    assert code == 2 and "--param zzz: no selected operator has this hyperparameter" in err
