"""Operator discovery through the ``upbench.operators`` entry-point group.

Built-ins are registered in pyproject.toml exactly as a third-party package would register its own, so the
registry has no list of operators. A plugin that fails to import is reported, not fatal: the other
operators stay usable and ``upbench list`` shows the reason.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points

from .errors import UsageError
from .plugin import Operator

GROUP = "upbench.operators"


@lru_cache(maxsize=1)
def _load() -> tuple[dict[str, Operator], dict[str, str]]:
    ops: dict[str, Operator] = {}
    broken: dict[str, str] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            obj = ep.load()
            op = obj() if isinstance(obj, type) else obj
        except Exception as exc:  # a broken third-party plugin must not take the others down
            broken[ep.name] = f"failed to load {ep.value}: {type(exc).__name__}: {exc}"
            continue
        if not isinstance(op, Operator):
            broken[ep.name] = f"{ep.value} is not an upbench.Operator"
            continue
        if op.name != ep.name:
            broken[ep.name] = f"{ep.value} calls itself {op.name!r}, registered as {ep.name!r}"
            continue
        if ep.name in ops:
            broken[ep.name] = f"registered twice ({ep.value})"
            continue
        ops[ep.name] = op
    return ops, broken


def operators() -> dict[str, Operator]:
    """Every loadable operator, by name."""
    return dict(_load()[0])


def broken_plugins() -> dict[str, str]:
    """Entry points that could not be loaded, with the reason."""
    return dict(_load()[1])


def get(name: str) -> Operator:
    ops = operators()
    if name not in ops:
        why = broken_plugins().get(name)
        if why:
            raise UsageError(f"operator {name}", why)
        raise UsageError(f"operator {name!r}", "not registered", f"known operators: {', '.join(sorted(ops))}")
    return ops[name]


def refresh() -> None:
    """Forget the cached discovery (tests install plugins at run time)."""
    _load.cache_clear()
