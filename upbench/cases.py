"""A case: one point of a sweep, as a frozen, hashable value (its axes are declared in axes.py).

Axes an operator does not use (K for nearest, Cy for an unguided operator) are
set to ``None`` by the runner, so one physical measurement is never repeated under different labels.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .axes import AXES, BY_NAME
from .dtypes import DTYPES

# Earlier versions had a one-value ``layout`` axis; it stays in the hashed identity so cell ids and seeds of
# runs made before it was dropped still match.
_LEGACY_IDENTITY = {"layout": "nchw"}
# Axes added later enter the hashed identity only away from the value every earlier run had, so the ids of
# those runs (and the baselines made from them) still match.
_LATER_AXES = {"alloc": ("fresh", None)}


@dataclass(frozen=True)
class Case:
    """One sweep cell's workload, independent of the implementation that computes it.

    ``Cy`` is the guidance (or similarity) channel count and ``W`` the low-res width; ``None`` in either
    means "same as C" / "same as H" once normalised by :meth:`resolved`.
    """

    op: str
    B: int = 1
    C: int = 64
    Cy: int | None = None
    H: int = 32
    W: int | None = None
    s: int = 2
    K: int | None = 5
    dtype: str = "float32"
    device: str = "cpu"
    pass_: str = "fwd"
    threads: int | None = None
    alloc: str | None = "fresh"
    hp: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    # -- derived shapes -------------------------------------------------------------------------------
    @property
    def cy(self) -> int:
        return self.C if self.Cy is None else self.Cy

    @property
    def w(self) -> int:
        return self.H if self.W is None else self.W

    @property
    def out_hw(self) -> tuple[int, int]:
        return self.H * self.s, self.w * self.s

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def params(self) -> dict[str, Any]:
        """Operator hyperparameters of this case as a dict."""
        return dict(self.hp)

    def with_(self, **changes: Any) -> Case:
        return replace(self, **changes)

    # -- identity -------------------------------------------------------------------------------------
    def axes(self) -> dict[str, Any]:
        """Axis values as result columns, in the axes table's order, with ``op`` and ``hp``."""
        return {"op": self.op, **{a: getattr(self, BY_NAME[a].attr) for a in AXES},
                "hp": json.dumps(dict(self.hp), sort_keys=True)}

    def _identity(self) -> dict[str, Any]:
        d = {**self.axes(), **_LEGACY_IDENTITY}
        for k, old in _LATER_AXES.items():
            if d[k] in old:
                del d[k]
        return d

    def workload_key(self) -> str:
        """Everything that determines inputs and weights: impl- and pass-independent."""
        d = self._identity()
        for k in ("pass", "threads", "alloc"):
            d.pop(k, None)
        return json.dumps(d, sort_keys=True)

    def seed(self) -> int:
        """Seed for inputs and weights; every impl and pass of one workload sees the same tensors."""
        return int(hashlib.sha256(self.workload_key().encode()).hexdigest()[:8], 16) & 0x7FFFFFFF

    def label(self) -> str:
        """Short human-readable description for progress bars and messages."""
        parts = [f"B{self.B}", f"C{self.C}"]
        if self.Cy is not None and self.Cy != self.C:
            parts.append(f"Cy{self.Cy}")
        parts.append(f"{self.H}x{self.w}")
        parts.append(f"s{self.s}")
        if self.K is not None:
            parts.append(f"K{self.K}")
        parts += [self.dtype, self.device, self.pass_]
        if self.alloc == "warm":
            parts.append("warm")
        if self.hp:
            parts.append(",".join(f"{k}={v}" for k, v in self.hp))
        return f"{self.op}[{' '.join(parts)}]"


def cell_id(stages: tuple[Case, ...], impl: str) -> str:
    """Stable id of an impl on one case (or a model's stages): the same on every machine and run."""
    d = {"impl": impl, "stages": [c._identity() for c in stages]}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
