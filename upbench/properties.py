"""Properties an operator declares (``Operator.properties``) and their checks on a constant input.

A property is a fact about the operator's mathematics that needs no reference to check: an impl that
returns the wrong value on a constant map fails it even when a plugin's reference shares the bug. The
check runs in the agreement pass on the all-constant input (every floating input set to one constant).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .cases import Case
from .plugin import Operator

PROPERTIES: dict[str, str] = {
    "convex": "the output is a convex combination of input features: on a constant input every interior "
              "pixel equals the constant (border windows include zero padding, whose weight is not "
              "renormalised, so borders are exempt)",
    "exact_on_constant": "on a constant input every output pixel, borders included, equals the constant",
}


def unknown(names: tuple[str, ...]) -> list[str]:
    """Declared names that are not properties upbench can check."""
    return [n for n in names if n not in PROPERTIES]


def check_properties(op: Operator, case: Case, out: Tensor, value: float) -> list[str]:
    """What fails of ``op.properties`` for ``out``, the output on a constant input equal to ``value``."""
    bad = unknown(op.properties)
    if bad:
        raise ValueError(f"operator {op.name} declares unknown properties {bad}; known: {sorted(PROPERTIES)}")
    err = (out.detach().to("cpu", torch.float64) - value).abs()
    err = torch.where(torch.isnan(err), torch.full_like(err, math.inf), err) / abs(value)
    tol = op.tolerance[case.dtype]
    border = op.border_mask(case)
    m = border[..., None] if op.channels_last else border
    if tuple(err.shape[-3:-1] if op.channels_last else err.shape[-2:]) != tuple(border.shape):
        m = torch.zeros_like(m)  # an output not laid out like the border map: check every pixel
    interior = ~m.expand_as(err)
    failed = []
    for name in op.properties:
        where = interior if name == "convex" else torch.ones_like(interior)
        worst = float(err[where].max()) if bool(where.any()) else 0.0
        if not worst <= tol:
            failed.append(f"{name}: constant {value} gives up to {worst:.2e} relative error "
                          f"({'interior' if name == 'convex' else 'any'} pixels, tol {tol:.0e})")
    return failed
