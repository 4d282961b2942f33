"""Parameter-free baselines: nearest and bilinear upsampling (``F.interpolate``), DESIGN.md §4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from upbench.cases import Case
from upbench.plugin import Impl, Operator


def _interp(mode: str):
    kw = {} if mode == "nearest" else {"align_corners": False}

    def factory(case: Case, module: None):
        def run(x: Tensor) -> Tensor:
            return F.interpolate(x, scale_factor=case.s, mode=mode, **kw)

        return run

    return factory


def _bilinear_reference(x: Tensor, s: int) -> Tensor:
    """Half-pixel-centre bilinear written out: source = (dst + 0.5)/s − 0.5, clamped at the borders."""
    _, _, h, w = x.shape

    def taps(n: int) -> tuple[Tensor, Tensor, Tensor]:
        src = ((torch.arange(n * s, dtype=torch.float64) + 0.5) / s - 0.5).clamp(min=0)
        lo = src.floor().long().clamp(max=n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        return lo, hi, src - lo
    r0, r1, fy = taps(h)
    c0, c1, fx = taps(w)
    fy, fx = fy[:, None], fx[None, :]
    g = lambda r, c: x[:, :, r][:, :, :, c]  # noqa: E731
    return (g(r0, c0) * (1 - fy) * (1 - fx) + g(r0, c1) * (1 - fy) * fx
            + g(r1, c0) * fy * (1 - fx) + g(r1, c1) * fy * fx)


class Nearest(Operator):
    name = "nearest"
    properties = ("convex", "exact_on_constant")  # checked on a constant map (upbench.properties)
    description = "nearest-neighbour upsampling (F.interpolate); no parameters, 0 MACs"
    uses_K = False
    impls = (Impl("torch", _interp("nearest"), "F.interpolate(mode='nearest')"),)

    def reference(self, case: Case, inputs: dict[str, Tensor], module: None) -> Tensor:
        x = inputs["x"]
        return x.repeat_interleave(case.s, dim=2).repeat_interleave(case.s, dim=3)

    def macs(self, case: Case) -> int:
        return 0

    def bwd_macs(self, case: Case) -> int:
        return 0


class Bilinear(Operator):
    name = "bilinear"
    properties = ("convex", "exact_on_constant")  # taps sum to 1, clamped at the borders
    description = "bilinear upsampling, align_corners=False; no parameters, 4 MACs per output element"
    uses_K = False
    impls = (Impl("torch", _interp("bilinear"), "F.interpolate(mode='bilinear', align_corners=False)"),)

    def reference(self, case: Case, inputs: dict[str, Tensor], module: None) -> Tensor:
        return _bilinear_reference(inputs["x"], case.s)

    def macs(self, case: Case) -> int:
        oh, ow = case.out_hw
        return 4 * case.B * case.C * oh * ow

    def bwd_macs(self, case: Case) -> int:
        return self.macs(case)  # the gradient scatters each output element back through its 4 taps


NEAREST = Nearest()
BILINEAR = Bilinear()
