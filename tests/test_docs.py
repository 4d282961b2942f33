from pathlib import Path

from upbench.metrics import markdown_table, metrics_table

ROOT = Path(__file__).resolve().parent.parent


def test_results_doc_lists_every_column_as_declared():
    doc = (ROOT / "docs" / "results.md").read_text()
    assert markdown_table() in doc and metrics_table() in doc


def test_readme_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in readme
    assert "upbench run --suite memory" in readme


def test_every_core_subpackage_is_packaged():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"upbench." + p.parent.relative_to(ROOT / "upbench").as_posix().replace("/", ".")
             for p in (ROOT / "upbench").rglob("__init__.py") if p.parent != ROOT / "upbench"}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"
