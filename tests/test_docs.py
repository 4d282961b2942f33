from pathlib import Path

from upbench.metrics import markdown_table

ROOT = Path(__file__).resolve().parent.parent


def test_results_doc_lists_every_column_as_declared():
    assert markdown_table() in (ROOT / "docs" / "results.md").read_text()


def test_readme_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in readme
    assert "upbench run --suite memory" in readme
