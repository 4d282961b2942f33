"""Suites: TOML files → typed :class:`Suite` → an ordered list of :class:`Cell` (the sweep's cartesian product).

A suite file has a ``[suite]`` table (name, description, kind, metrics, passes, timing), ``[axes]``, one
``[[op]]`` per operator (name, optional impls and params), optional ``[[skip]]`` filters
(``where = {K = 7, C = 256}``, ``reason = "…"``) and, for ``kind = "model"``, one ``[[stage]]`` per
upsampling stage. See docs/suites.md.
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from . import registry
from .alloc import unavailable as alloc_unavailable
from .axes import AXES, BY_NAME, DEFAULTS, EXPANSION_ORDER, STAGE_KEYS, normalise
from .cases import Case, cell_id
from .errors import UsageError
from .metrics import DEFAULT as DEFAULT_METRICS
from .metrics import SELECTABLE as METRICS
from .plugin import Operator
from .timing import Stopping

KINDS = ("sweep", "model")


@dataclass(frozen=True)
class OpSel:
    name: str
    impls: tuple[str, ...] | None = None
    params: tuple[tuple[str, Any], ...] = ()
    axes: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # this operator's own axis values (over [axes])


@dataclass(frozen=True)
class Skip:
    where: tuple[tuple[str, Any], ...]
    reason: str

    def matches(self, case: Case, impl: str) -> bool:
        vals = {**case.axes(), "op": case.op, "impl": impl}
        return all(vals.get(k) == v or (isinstance(v, list) and vals.get(k) in v) for k, v in self.where)


@dataclass(frozen=True)
class Expect(Skip):
    """A ``[[expect]]`` entry: cells whose disagreement with the reference is expected, and why (shown in the
    report); any other cell that disagrees beyond tolerance fails the run. With ``inputs`` it covers a cell only
    when every input it failed on is one of those (e.g. the ill-conditioned ``heavy``/``large`` extra inputs of
    the accuracy metric), so the same cell failing on its own input still fails the run."""

    inputs: tuple[str, ...] = ()

    def covers(self, cell: Cell, row: dict[str, Any]) -> bool:
        if not any(self.matches(c, cell.impl) for c in cell.stages):
            return False
        if not self.inputs:
            return True
        failed = [x.split("@")[0] for x in str(row.get("agree_failed_inputs") or "").split(",") if x]
        return bool(failed) and set(failed) <= set(self.inputs)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    source: str
    kind: str
    ops: tuple[OpSel, ...]
    axes: dict[str, tuple[Any, ...]]
    metrics: frozenset[str]
    timing: Stopping
    skips: tuple[Skip, ...] = ()
    stages: tuple[dict[str, int], ...] = ()
    baseline: str | None = None  # the operator the report's speed-up column divides by (model suites)
    expects: tuple[Expect, ...] = ()  # cells whose disagreement with the reference is expected, with why


@dataclass(frozen=True)
class Cell:
    """One row of results: an impl on a case (or on a model's stages, run one after another)."""

    op: str
    impl: str
    stages: tuple[Case, ...]
    skip: str | None = None
    id: str = field(default="")

    @property
    def case(self) -> Case:
        return self.stages[0]


def builtin_suites() -> dict[str, Path]:
    root = files("upbench.suites")
    return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml")}


def find(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or "/" in name_or_path:
        if not p.is_file():
            raise UsageError(f"--suite {name_or_path}", "no such file")
        return p
    known = builtin_suites()
    if name_or_path not in known:
        raise UsageError(f"--suite {name_or_path}", "unknown suite",
                         f"built-in suites: {', '.join(sorted(known))}; or give a path to a .toml file")
    return known[name_or_path]


def load(name_or_path: str) -> Suite:
    path = find(name_or_path)
    where = f"suite {path.name}"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(where, f"is not UTF-8 text (byte {exc.start})", "TOML files are UTF-8") from None
    except OSError as exc:
        raise UsageError(where, f"cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(where, f"malformed TOML: {exc}") from None
    return parse(raw, where, str(path))


SUITE_KEYS = ("name", "description", "kind", "metrics", "passes", "baseline")


def _check_suite_table(meta: dict, where: str) -> None:
    """[suite]: known keys only; a name that is safe as a directory name; metrics as a list of strings."""
    unknown = sorted(set(meta) - set(SUITE_KEYS))
    if unknown:
        raise UsageError(where, f"unknown key(s) in [suite]: {', '.join(unknown)}", f"keys are {', '.join(SUITE_KEYS)}")
    name = meta.get("name")
    if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name)):
        raise UsageError(where, f"[suite] name {name!r} is not a plain name",
                         "use letters, digits, '.', '_' and '-' (it names the run directory)")
    for key in ("description", "kind", "baseline"):
        if key in meta and not isinstance(meta[key], str):
            raise UsageError(where, f"[suite] {key} must be a string")
    metrics = meta.get("metrics")
    if metrics is not None and (not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics)):
        raise UsageError(where, f"[suite] metrics = {metrics!r} must be a list of strings",
                         'e.g. metrics = ["latency", "memory"]')


def _stopping(raw: dict, where: str) -> Stopping:
    """[timing] → Stopping, every value checked for type and range here rather than failing every cell later."""
    fields = Stopping.__dataclass_fields__
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UsageError(where, f"unknown [timing] key(s) {', '.join(unknown)}", f"keys are {', '.join(fields)}")
    for k, v in raw.items():
        want = bool if k in ("cold", "cuda_graph") else int if k in ("min_samples", "max_samples") else float
        ok = isinstance(v, bool) if want is bool else (
            isinstance(v, int) and not isinstance(v, bool) if want is int else
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
        if not ok:
            kind = "true or false" if want is bool else want.__name__
            raise UsageError(where, f"[timing] {k} = {v!r} must be {kind}")
        if want is not bool and (v < 0 or (v == 0 and k in ("budget_s", "min_samples", "max_samples"))):
            raise UsageError(where, f"[timing] {k} = {v!r} must be {'> 0' if k != 'warmup_s' else '≥ 0'}")
    st = Stopping(**raw)
    if st.min_samples < 2 or st.max_samples < st.min_samples:  # a spread (IQR) needs two samples
        raise UsageError(where, f"[timing] min_samples = {st.min_samples}, max_samples = {st.max_samples}",
                         "need 2 ≤ min_samples ≤ max_samples")
    return st


def _table(raw: dict, key: str, where: str) -> dict:
    v = raw.get(key, {})
    if not isinstance(v, dict):
        raise UsageError(where, f"[{key}] must be a table")
    return v


def parse(raw: dict, where: str, source: str = "<inline>") -> Suite:
    unknown = set(raw) - {"suite", "axes", "op", "skip", "expect", "stage", "timing"}
    if unknown:
        raise UsageError(where, f"unknown section(s) {', '.join(sorted(unknown))}",
                         "sections are [suite], [axes], [timing], [[op]], [[skip]], [[expect]], [[stage]]")
    meta = _table(raw, "suite", where)
    _check_suite_table(meta, where)
    name = meta.get("name") or Path(source).stem
    kind = meta.get("kind", "sweep")
    if kind not in KINDS:
        raise UsageError(where, f"kind {kind!r} is not one of {', '.join(KINDS)}")
    metrics = meta.get("metrics", list(DEFAULT_METRICS))  # opt-in metrics (energy) only when named
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise UsageError(where, f"unknown metric(s) {', '.join(bad)}", f"metrics are {', '.join(METRICS)}")
    axes = {k: normalise(k, v, where) for k, v in _table(raw, "axes", where).items()}
    if "passes" in meta:
        axes["pass"] = normalise("pass", meta["passes"], where)
    timing = _stopping(_table(raw, "timing", where), where)
    ops = tuple(_op(o, where) for o in raw.get("op", []))
    if not ops:
        raise UsageError(where, "no [[op]] entries", 'add at least one, e.g. [[op]] name = "bilinear"')
    skips = tuple(_skip(s, where) for s in raw.get("skip", []))
    expects = tuple(_expect(e, where) for e in raw.get("expect", []))
    stages = tuple(_stage(s, where) for s in raw.get("stage", []))
    if kind == "model" and not stages:
        raise UsageError(where, 'kind = "model" needs at least one [[stage]]')
    baseline = meta.get("baseline")
    if baseline is not None and baseline not in {o.name for o in ops}:
        raise UsageError(where, f"baseline {baseline!r} is not one of the suite's [[op]] names")
    return Suite(name, meta.get("description", ""), source, kind, ops, axes, frozenset(metrics), timing, skips,
                 stages, baseline, expects)


def _op(o: Any, where: str) -> OpSel:
    if not isinstance(o, dict) or "name" not in o:
        raise UsageError(where, "each [[op]] needs a name")
    extra = set(o) - {"name", "impls", "params", "axes"}
    if extra:
        raise UsageError(where, f"[[op]] {o['name']}: unknown key(s) {', '.join(sorted(extra))}",
                         "keys are name, impls, params, axes")
    impls = o.get("impls")
    axes = o.get("axes", {})
    if not isinstance(axes, dict):
        raise UsageError(where, f"[[op]] {o['name']}: axes must be a table")
    own = tuple((k, normalise(k, v, f"{where}, [[op]] {o['name']}")) for k, v in axes.items())
    return OpSel(o["name"], tuple(impls) if impls else None, tuple(sorted(o.get("params", {}).items())), own)


def _skip(s: Any, where: str, section: str = "skip") -> Skip:
    if not isinstance(s, dict) or not isinstance(s.get("where"), dict) or not isinstance(s.get("reason"), str) \
            or not s["reason"].strip() or set(s) - {"where", "reason"}:
        raise UsageError(where, f"each [[{section}]] needs where = {{axis = value, …}} and reason = \"…\"")
    for k in s["where"]:
        if k not in (*AXES, "op", "impl"):
            raise UsageError(where, f"[[{section}]] names unknown axis {k!r}")
    return Skip(tuple(sorted(s["where"].items())), s["reason"])


def _expect(e: Any, where: str) -> Expect:
    inputs = e.pop("inputs", []) if isinstance(e, dict) else []
    if not isinstance(inputs, list) or not all(isinstance(x, str) and x for x in inputs):
        raise UsageError(where, "[[expect]] inputs must be a list of input names", 'e.g. inputs = ["heavy", "large"]')
    sk = _skip(e, where, "expect")
    return Expect(sk.where, sk.reason, tuple(inputs))


def mark_disagreements(suite: Suite, cells: list[Cell], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows that disagree with their reference beyond tolerance (``agree`` is False) and that no
    ``[[expect]]`` covers; a covered row gets ``agree_expected`` = the entry's reason, for the report.
    ``cells[i]`` is the cell of ``rows[i]``. A run with any returned row exits 1."""
    unexpected = []
    for cell, row in zip(cells, rows, strict=True):
        if row.get("agree") is not False:
            continue
        exp = next((e for e in suite.expects if e.covers(cell, row)), None)
        if exp is None:
            unexpected.append(row)
        else:
            row["agree_expected"] = exp.reason
    return unexpected


def _stage(s: Any, where: str) -> dict[str, int]:
    if not isinstance(s, dict) or any(k not in STAGE_KEYS for k in s) or not {"C", "H"} <= set(s):
        raise UsageError(where, f"[[stage]] {s!r}: needs C and H, may have {', '.join(STAGE_KEYS)}")
    return {k: normalise(k, v, where)[0] for k, v in s.items()}


# -- expansion ----------------------------------------------------------------------------------------------
def _case_for(op: Operator, sel: OpSel, vals: dict[str, Any]) -> Case:
    kw = {BY_NAME[k].attr: v for k, v in vals.items()}
    if not op.uses_K:
        kw["K"] = None
    if not op.has_Cy and not (op.guided and kw.get("Cy") not in (None, kw.get("C"))):
        kw["Cy"] = None  # kept when unequal on a guided op: its check() rejects it rather than drop it silently
    elif kw.get("Cy") == kw.get("C"):
        kw["Cy"] = None
    if kw.get("W") == kw.get("H"):
        kw["W"] = None
    if kw.get("device") == "cuda":
        kw["alloc"] = None  # the CUDA caching allocator keeps freed blocks: no fresh/warm distinction to time
    hp = {**op.defaults(), **dict(sel.params)}
    return Case(op=op.name, hp=tuple(sorted(hp.items())), **kw)


def expand(suite: Suite, only_ops: tuple[str, ...] | None = None, only_impls: tuple[str, ...] | None = None,
           overrides: dict[str, tuple[Any, ...]] | None = None,
           params: dict[str, Any] | None = None) -> list[Cell]:
    """The ordered, de-duplicated cells of ``suite``; raises UsageError on values no cell can use."""
    defaults = {k: (DEFAULTS[k],) for k in EXPANSION_ORDER}
    sels = [o for o in suite.ops if not only_ops or o.name in only_ops]
    if only_ops:
        missing = [n for n in only_ops if n not in {o.name for o in suite.ops}]
        if missing:
            sels += [OpSel(n) for n in missing]  # --op may add an operator the suite does not list
    if only_impls:
        all_impls = {i.name for s in sels for i in registry.get(s.name).impls}
        bad = [n for n in only_impls if n not in all_impls]
        if bad:
            raise UsageError(f"--impl {bad[0]}", "no selected operator has this impl",
                             f"impls are {', '.join(sorted(all_impls))}")
    cells: list[Cell] = []
    seen: set[str] = set()
    params = params or {}
    declared = {n for s in sels for n in registry.get(s.name).defaults()}
    for name in params:  # --param sets NAME on every selected operator that has it; an error only if none has
        if name not in declared:
            raise UsageError(f"--param {name}", "no selected operator has this hyperparameter",
                             f"hyperparameters are {', '.join(sorted(declared)) or 'none'}")
    for sel in sels:
        op = registry.get(sel.name)
        mine = {k: v for k, v in params.items() if k in op.defaults()}
        sel = OpSel(sel.name, sel.impls, tuple(sorted({**dict(sel.params), **mine}.items())), sel.axes)
        unknown = set(dict(sel.params)) - set(op.defaults())
        if unknown:
            raise UsageError(f"operator {op.name}", f"unknown hyperparameter(s) {', '.join(sorted(unknown))}",
                             f"hyperparameters are {', '.join(op.defaults()) or 'none'}")
        impls = _select_impls(op, sel, only_impls)
        # precedence: defaults < the suite's [axes] < this operator's axes < command-line --set
        axes = {**defaults, **suite.axes, **dict(sel.axes), **(overrides or {})}
        names = list(axes)
        op_cells: list[Cell] = []
        for combo in itertools.product(*(axes[n] for n in names)):
            vals = dict(zip(names, combo, strict=True))
            for stage_cases in _stage_cases(op, sel, vals, suite):
                candidates = [_cell(op, impl, stage_cases, suite) for impl in impls]
                if suite.kind == "model" and not sel.impls and not only_impls:
                    # A model table compares operators: one impl each, the operator's most preferred that can
                    # run here (its `model_impls`, then declaration order).
                    pref = {n: i for i, n in enumerate(op.model_impls)}
                    ranked = sorted(candidates, key=lambda c: pref.get(c.impl, len(pref)))
                    candidates = [next((c for c in ranked if not c.skip), ranked[0])]
                for cell in candidates:
                    if cell.id not in seen:
                        seen.add(cell.id)
                        op_cells.append(cell)
        invalid = [c for c in op_cells if c.skip and c.skip.startswith("invalid: ")]
        if op_cells and len(invalid) == len(op_cells):
            raise UsageError(f"operator {op.name}", invalid[0].skip.removeprefix("invalid: "),
                             "no cell of this operator is valid with these axis values")
        cells += op_cells
    return cells


def _select_impls(op: Operator, sel: OpSel, only: tuple[str, ...] | None) -> list[str]:
    names = [i.name for i in op.impls]
    for n in sel.impls or ():
        if n not in names:
            raise UsageError(f"operator {op.name}", f"no impl {n!r}", f"impls are {', '.join(names)}")
    chosen = list(sel.impls or names)
    if only:
        chosen = [n for n in names if n in only]
    return chosen


def _stage_cases(op: Operator, sel: OpSel, vals: dict[str, Any], suite: Suite) -> list[tuple[Case, ...]]:
    if suite.kind != "model":
        return [(_case_for(op, sel, vals),)]
    return [tuple(_case_for(op, sel, {**vals, "W": None, "Cy": None, **st}) for st in suite.stages)]


def _cell(op: Operator, impl_name: str, stages: tuple[Case, ...], suite: Suite) -> Cell:
    impl = op.impl(impl_name)
    cid = cell_id(stages, impl_name)
    for case in stages:
        why = op.check(case)
        if why:
            return Cell(op.name, impl_name, stages, f"invalid: {why}", cid)
    for sk in suite.skips:
        if any(sk.matches(c, impl_name) for c in stages):
            return Cell(op.name, impl_name, stages, f"filtered: {sk.reason}", cid)
    why = impl.skip_reason(stages[0]) or (stages[0].alloc and alloc_unavailable(stages[0].alloc))
    return Cell(op.name, impl_name, stages, f"unsupported: {why}" if why else None, cid)
