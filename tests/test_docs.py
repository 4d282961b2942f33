import re
import textwrap
from pathlib import Path

import pytest

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


DOCS = sorted((ROOT / "docs").glob("*.md"))
RUNNABLE = re.compile(r"^[ \t]*<!-- runnable[^>]*-->\n[ \t]*```(\w+)\n(.*?)^[ \t]*```", re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _runnable():
    for doc in DOCS:
        for i, m in enumerate(RUNNABLE.finditer(doc.read_text())):
            yield pytest.param(doc.name, m[1], textwrap.dedent(m[2]), id=f"{doc.stem}-{i}")


def _slug(heading: str) -> str:
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def test_some_blocks_are_marked_runnable():
    assert {p.values[0] for p in _runnable()} >= {"plugins.md", "suites.md", "ci.md"}


@pytest.mark.parametrize("doc,lang,code", list(_runnable()))
def test_runnable_doc_blocks_work(doc, lang, code, tmp_path):
    import tomllib

    if lang == "python":
        ns: dict = {}
        exec(compile(code, doc, "exec"), ns)
        from upbench import Operator
        from upbench.accuracy import agreement_of
        from upbench.cases import Case
        from upbench.prepare import Prepared, prepare_stage
        from upbench.sweeps import Cell

        ops = [v for v in ns.values() if isinstance(v, Operator)]
        assert ops, "a runnable python block defines an operator"
        for op in ops:  # every impl of the example agrees with its own reference
            case = Case(op=op.name, C=4, H=5, hp=tuple(sorted(op.defaults().items())))
            for impl in op.impls:
                prepared = Prepared(Cell(op.name, impl.name, (case,)), op, impl, [prepare_stage(op, impl, case)])
                assert agreement_of(prepared).ok, (op.name, impl.name)
    elif lang == "toml" and doc == "suites.md":
        from upbench import sweeps

        cells = sweeps.expand(sweeps.parse(tomllib.loads(code), doc))
        assert cells and any(c.skip and c.skip.startswith("filtered") for c in cells)
    elif lang == "toml":
        from upbench.compare import load_thresholds

        (tmp_path / "t.toml").write_text(code)
        assert load_thresholds(str(tmp_path / "t.toml"), None).rules
    else:
        pytest.fail(f"no runner for {lang} blocks")


@pytest.mark.parametrize("doc", [*DOCS, ROOT / "README.md"], ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        assert dest.exists(), f"{doc.name}: broken link {target}"
        if anchor and dest.suffix == ".md":
            heads = {_slug(h) for h in re.findall(r"^#+ (.*)$", dest.read_text(), re.M)}
            assert anchor in heads, f"{doc.name}: no heading #{anchor} in {dest.name}"


def test_docs_cite_no_internal_design_notes():
    for doc in [*DOCS, ROOT / "README.md"]:
        assert "DESIGN.md" not in doc.read_text(), doc.name
