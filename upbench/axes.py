"""The axes of a sweep, in one table, and the parsing of their values (TOML values and CLI ``--set``).

Every axis — its name (as a suite key, a ``--set`` name and a results column), its type, its default, its
choices, whether a model stage may set it, and what its column means — is declared once in :data:`TABLE`; cases,
suites, the runner, reports and compare read it from here.

TOML:  ``H = 64``, ``H = [32, 64]``, ``H = {pow2 = [16, 128]}``, ``K = {range = [1, 7, 2]}`` (inclusive).
CLI:   ``--set H=32,64``, ``--set H=pow2:16..128``, ``--set K=1..7:2``, ``--set dtype=float32,float16``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .dtypes import DTYPES
from .errors import UsageError

PASSES = ("fwd", "bwd", "fwd+bwd")
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Axis:
    name: str
    kind: type  # int or str
    default: Any
    description: str  # the results column's meaning (docs/results.md)
    choices: tuple[str, ...] | None = None  # str axes
    stage: bool = False  # a model suite's [[stage]] may set it
    field: str = ""  # the Case attribute, when it differs from the name

    @property
    def attr(self) -> str:
        return self.field or self.name


# The order is the column order of results (after suite, cell_id, op, impl).
TABLE: tuple[Axis, ...] = (
    Axis("pass", str, "fwd", "`fwd` (inference, no autograd), `bwd` (backward only, graph built outside the "
         "timer) or `fwd+bwd`", PASSES, field="pass_"),
    Axis("B", int, 1, "batch size"),
    Axis("C", int, 64, "channels of x (model suites: of the first stage)", stage=True),
    Axis("Cy", int, None, "guidance / similarity channels; empty when the operator has none or Cy = C", stage=True),
    Axis("H", int, 32, "low-res height", stage=True),
    Axis("W", int, None, "low-res width; empty means W = H", stage=True),
    Axis("s", int, 2, "upsampling scale", stage=True),
    Axis("K", int, 5, "kernel size; empty when the operator has none", stage=True),
    Axis("dtype", str, "float32", "input, parameter and output dtype", tuple(DTYPES)),
    Axis("device", str, "cpu", "`cpu` or `cuda`", DEVICES),
    Axis("threads", int, None, "requested torch CPU threads (empty: torch's default)"),
    Axis("alloc", str, "fresh", "CPU allocation mode while the cell runs: `fresh` (the allocator as configured, what "
         "a plain call sees: a large output is faulted in afresh on every call) or `warm` (freed memory kept, so the "
         "time is the kernel's and a warm pool's); empty on CUDA, whose caching allocator is always warm",
         ("fresh", "warm")),
)
BY_NAME: dict[str, Axis] = {a.name: a for a in TABLE}
AXES: tuple[str, ...] = tuple(a.name for a in TABLE)
INT_AXES: tuple[str, ...] = tuple(a.name for a in TABLE if a.kind is int)
STAGE_KEYS: tuple[str, ...] = tuple(a.name for a in TABLE if a.stage)
DEFAULTS: dict[str, Any] = {a.name: a.default for a in TABLE}
CHOICES: dict[str, tuple[str, ...]] = {a.name: a.choices for a in TABLE if a.choices}
SIZE_AXES: tuple[str, ...] = ("H", "W")  # what a scaling fit varies; the other axes stay fixed
SETTING_AXES: tuple[str, ...] = ("threads", "alloc")  # how the machine ran the cell, not the workload
# Sweeps expand with the pass varying fastest: the passes of one workload run back to back.
EXPANSION_ORDER: tuple[str, ...] = (*(a for a in AXES if a != "pass"), "pass")
# Report tables show the workload first, then the pass and the settings.
REPORT_AXES: tuple[str, ...] = (*(a for a in AXES if a != "pass" and a not in SETTING_AXES), "pass", *SETTING_AXES)
CHOICES["device"] = (*DEVICES, "auto")  # resolved when the run starts


def _pow2(lo: int, hi: int, where: str) -> list[int]:
    if lo < 1 or hi < lo or lo & (lo - 1) or hi & (hi - 1):
        raise UsageError(where, f"pow2 range {lo}..{hi} needs powers of two with lo ≤ hi", "e.g. pow2:16..128")
    out, v = [], lo
    while v <= hi:
        out.append(v)
        v *= 2
    return out


def _range(lo: int, hi: int, step: int, where: str) -> list[int]:
    if step < 1 or hi < lo:
        raise UsageError(where, f"range {lo}..{hi}:{step} is empty", "write lo..hi[:step] with lo ≤ hi, step ≥ 1")
    return list(range(lo, hi + 1, step))


def _check_axis(name: str, where: str) -> None:
    if name not in AXES:
        raise UsageError(where, f"unknown axis {name!r}", f"axes are {', '.join(AXES)}")


def normalise(name: str, raw: Any, where: str) -> tuple[Any, ...]:
    """A TOML value for axis ``name`` → a tuple of checked values."""
    _check_axis(name, where)
    where = f"{where}, axis {name}"
    if isinstance(raw, dict):
        if set(raw) == {"pow2"} and _is_int_pair(raw["pow2"]):
            values: list[Any] = _pow2(*raw["pow2"], where)
        elif set(raw) == {"range"} and isinstance(raw["range"], list) and len(raw["range"]) in (2, 3):
            lo, hi, *step = raw["range"]
            values = _range(lo, hi, step[0] if step else 1, where)
        else:
            raise UsageError(where, f"{raw!r} is not a value, a list, {{pow2 = [lo, hi]}} "
                             "or {range = [lo, hi, step]}")
    elif isinstance(raw, list):
        values = raw
    else:
        values = [raw]
    if not values:
        raise UsageError(where, "no values")
    return tuple(_check_value(name, v, where) for v in values)


def _is_int_pair(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(isinstance(i, int) for i in v)


def _check_value(name: str, v: Any, where: str) -> Any:
    if name in INT_AXES:
        if isinstance(v, bool) or not isinstance(v, int):
            raise UsageError(where, f"{v!r} is not an integer")
        if v < 1:
            raise UsageError(where, f"{v} must be ≥ 1")
        return v
    if not isinstance(v, str) or v not in CHOICES[name]:
        raise UsageError(where, f"{v!r} is not one of {', '.join(CHOICES[name])}")
    return v


def parse_set(spec: str) -> tuple[str, tuple[Any, ...]]:
    """``--set NAME=VALUES`` → (name, values)."""
    where = f"--set {spec}"
    if "=" not in spec:
        raise UsageError(where, "expected NAME=VALUES", "e.g. --set H=32,64 or --set K=1..7:2")
    name, _, text = spec.partition("=")
    name = name.strip()
    _check_axis(name, where)
    if name not in INT_AXES:
        return name, normalise(name, [t.strip() for t in text.split(",") if t.strip()], "--set")
    values: list[int] = []
    for tok in filter(None, (t.strip() for t in text.split(","))):
        try:
            if tok.startswith("pow2:"):
                lo, hi = tok[5:].split("..")
                values += _pow2(int(lo), int(hi), where)
            elif ".." in tok:
                span, _, step = tok.partition(":")
                lo, hi = span.split("..")
                values += _range(int(lo), int(hi), int(step or 1), where)
            else:
                values.append(int(tok))
        except ValueError:
            raise UsageError(where, f"{tok!r} is not an integer, lo..hi[:step] or pow2:lo..hi") from None
    return name, normalise(name, values, "--set")


def parse_param(spec: str) -> tuple[str, Any]:
    """``--param NAME=VALUE`` (an operator hyperparameter) → (name, value), the value typed like TOML."""
    import tomllib

    if "=" not in spec:
        raise UsageError(f"--param {spec}", "expected NAME=VALUE", "e.g. --param d=64")
    name, _, text = spec.partition("=")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word such as depthwise
    return name.strip(), value
