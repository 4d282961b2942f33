"""Axis values: parsing TOML values and CLI ``--set`` strings into typed tuples, in one place.

TOML:  ``H = 64``, ``H = [32, 64]``, ``H = {pow2 = [16, 128]}``, ``K = {range = [1, 7, 2]}`` (inclusive).
CLI:   ``--set H=32,64``, ``--set H=pow2:16..128``, ``--set K=1..7:2``, ``--set dtype=float32,float16``.
"""

from __future__ import annotations

from typing import Any

from .cases import AXES, DEVICES, DTYPES, INT_AXES, LAYOUTS, PASSES, THREAD_AXIS
from .errors import UsageError

CHOICES: dict[str, tuple[str, ...]] = {"dtype": tuple(DTYPES), "device": (*DEVICES, "auto"), "pass": PASSES,
                                       "layout": LAYOUTS}
POSITIVE = {"B", "C", "Cy", "H", "W", "s", "K", THREAD_AXIS}


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
    if name in INT_AXES or name == THREAD_AXIS:
        if isinstance(v, bool) or not isinstance(v, int):
            raise UsageError(where, f"{v!r} is not an integer")
        if name in POSITIVE and v < 1:
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
    if name not in INT_AXES and name != THREAD_AXIS:
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
