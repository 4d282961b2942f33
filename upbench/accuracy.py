"""Numerical agreement of an impl's output with the operator's float64 reference.

Errors are scaled by the reference's RMS, so a near-zero output cannot pass on an absolute tolerance and
one tolerance per dtype fits every operator. Border pixels (whose window reaches past the low-res map)
and interior pixels are reported separately: a border-rule bug hides in a global maximum otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .prepare import Prepared


@dataclass(frozen=True)
class Agreement:
    max_abs: float  # max |out − ref|
    rel_rms: float  # RMS(out − ref) / RMS(ref)
    max_rel: float  # max |out − ref| / RMS(ref): the number compared with the tolerance
    border_max_rel: float
    interior_max_rel: float
    tol: float
    ok: bool

    @staticmethod
    def worst(items: list[Agreement]) -> Agreement:
        return max(items, key=lambda a: (not a.ok, _nan_high(a.max_rel)))


def _nan_high(v: float) -> float:
    return math.inf if math.isnan(v) else v


def _masked_max(err: Tensor, mask: Tensor) -> float:
    return float(err[mask].max()) if bool(mask.any()) else 0.0


def agreement(out: Tensor, ref: Tensor, border: Tensor, tol: float, channels_last: bool = False) -> Agreement:
    """Compare ``out`` with ``ref`` (same shape); ``border`` is a (sH, sW) bool map of border pixels."""
    if out.shape != ref.shape:
        raise ValueError(f"output shape {tuple(out.shape)} differs from the reference's {tuple(ref.shape)}")
    ref = ref.detach().to("cpu", torch.float64)
    err = (out.detach().to("cpu", torch.float64) - ref).abs()
    err = torch.where(torch.isnan(err), torch.full_like(err, math.inf), err)  # NaN (an unwritten pixel) fails
    rms = float(ref.pow(2).mean().sqrt())
    scale = rms if rms > 0 else 1.0
    m = border[..., None] if channels_last else border
    mask = m.expand_as(err)
    max_abs = float(err.max()) if err.numel() else 0.0
    rel_rms = float(err.pow(2).mean().sqrt()) / scale if err.numel() else 0.0
    max_rel = max_abs / scale
    ok = math.isfinite(max_rel) and max_rel <= tol
    return Agreement(max_abs, rel_rms, max_rel, _masked_max(err, mask) / scale, _masked_max(err, ~mask) / scale,
                     tol, ok)


def agreement_of(p: Prepared) -> Agreement:
    """The worst agreement over a prepared cell's stages and outputs (or, for a backward pass, gradients)."""
    from .prepare import reference_outputs

    op, pass_ = p.op, p.cell.case.pass_
    results = []
    for st in p.stages:
        got, want = reference_outputs(op, st, pass_, st.case.seed() + 2)
        tol = (op.tolerance if pass_ == "fwd" else op.bwd_tolerance)[st.case.dtype]
        border = op.border_mask(st.case)
        for a, b in zip(got, want, strict=True):
            out_like = tuple(b.shape[-3:-1] if op.channels_last else b.shape[-2:]) == tuple(border.shape)
            mask = border if out_like else torch.zeros(b.shape[-2:], dtype=torch.bool)
            results.append(agreement(a, b, mask, tol, op.channels_last and out_like))
    return Agreement.worst(results)


def same_bits(a: object, b: object) -> bool:
    """Two results equal bit for bit (NaNs included): the determinism metric."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(
            torch.equal(a.detach().contiguous().view(torch.uint8), b.detach().contiguous().view(torch.uint8)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_bits(x, y) for x, y in zip(a, b, strict=True))
    return a is None and b is None
