"""IndexNet's decoder index (guided by the high-res y), DESIGN.md §4.

An index block on y (B, Cy, 2H, 2W) with stride 2 predicts 4 logits per low-res cell (holistic: one map for
all channels) or 4 per channel (depthwise, needs Cy = C); D = sigmoid(logits), pixel-shuffled to high res;
output = D ⊙ nearest_up(x). The block is linear (one strided conv) or nonlinear (strided conv, BatchNorm,
ReLU6, conv1×1); "context" means kernel 4 / padding 1, otherwise kernel 2 / padding 0. Convs are bias-free.
The depthwise blocks are the one-to-one form: the four per-position depthwise branches are fused into one
grouped conv Cy → 4·Cy (groups Cy), whose output channel 4c + t is exactly pixel_shuffle's sub-pixel t of
channel c. BatchNorm runs on its running statistics (the harness puts modules in eval mode).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from upbench.cases import Case
from upbench.plugin import HyperParam, Impl, Operator

from .reassembly import window_border

S = 2  # IndexNet predicts a 2×2 index per low-res cell


def _block_shapes(Cy: int, holistic: bool, nonlinear: bool, context: bool) -> list[tuple[int, int, int, int]]:
    """(in, out, groups, kernel) of each conv of the index block, in order."""
    k = 4 if context else 2
    if holistic:
        return [(Cy, 2 * Cy, 1, k), (2 * Cy, 4, 1, 1)] if nonlinear else [(Cy, 4, 1, k)]
    return [(Cy, 4 * Cy, Cy, k), (4 * Cy, 4 * Cy, 4 * Cy, 1)] if nonlinear else [(Cy, 4 * Cy, Cy, k)]


class IndexNetModule(nn.Module):
    def __init__(self, Cy: int, holistic: bool = True, nonlinear: bool = True, context: bool = True) -> None:
        super().__init__()
        pad = 1 if context else 0
        layers: list[nn.Module] = []
        for n, (cin, cout, groups, k) in enumerate(_block_shapes(Cy, holistic, nonlinear, context)):
            if n == 1:
                layers += [nn.BatchNorm2d(cin), nn.ReLU6()]
            layers.append(nn.Conv2d(cin, cout, k, stride=S if n == 0 else 1, padding=pad if n == 0 else 0,
                                    groups=groups, bias=False))
        self.block = nn.Sequential(*layers)

    def index(self, y: Tensor) -> Tensor:
        """Decoder index D (B, 1 or C, 2H, 2W)."""
        return F.pixel_shuffle(torch.sigmoid(self.block(y)), S)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.index(y) * F.interpolate(x, scale_factor=S, mode="nearest")


def _interp(case: Case, module: nn.Module | None):
    assert isinstance(module, IndexNetModule)
    return module


def _broadcast(case: Case, module: nn.Module | None):
    assert isinstance(module, IndexNetModule)

    def run(x: Tensor, y: Tensor) -> Tensor:
        # D (B, c, 2H, 2W) viewed as (B, c, H, 2, W, 2) against x (B, C, H, 1, W, 1): no upsampled copy of x.
        B, C, H, W = x.shape
        D = module.index(y)
        return (D.view(B, D.shape[1], H, S, W, S) * x[:, :, :, None, :, None]).view(B, C, H * S, W * S)

    return run


class IndexNet(Operator):
    name = "indexnet"
    description = ("IndexNet decoder index: index block on y (stride 2; default holistic, nonlinear, context "
                   "4×4 kernels; BN in eval mode), D = sigmoid → pixel shuffle, out = D ⊙ nearest(x); s = 2 only")
    guided = True
    uses_K = False
    hyperparams = (
        HyperParam("index", "holistic", "one index map for all channels, or one per channel (Cy = C)",
                   ("holistic", "depthwise")),
        HyperParam("nonlinear", True, "strided conv + BN + ReLU6 + conv1×1 (True) or one strided conv",
                   (True, False)),
        HyperParam("context", True, "kernel 4 / padding 1 (True) or kernel 2 / padding 0", (True, False)),
    )
    impls = (
        Impl("interp", _interp, "D × F.interpolate(x, nearest)"),
        Impl("broadcast", _broadcast, "D × x as a broadcast view; no upsampled copy of x"),
    )

    def _hp(self, case: Case) -> tuple[bool, bool, bool]:
        p = {**self.defaults(), **case.params}
        return p["index"] == "holistic", bool(p["nonlinear"]), bool(p["context"])

    def check(self, case: Case) -> str | None:
        why = super().check(case)
        if why:
            return why
        if case.s != S:
            return f"indexnet predicts a 2×2 index per low-res cell, so it needs s=2 (got s={case.s})"
        holistic, _, _ = self._hp(case)
        if not holistic and case.cy != case.C:
            return (f"indexnet variant depthwise needs Cy == C (got Cy={case.cy}, C={case.C}); "
                    "set Cy = C or use index=holistic")
        return None

    def module(self, case: Case) -> nn.Module:
        return IndexNetModule(case.cy, *self._hp(case)).eval()  # BatchNorm on its running statistics

    def reference(self, case: Case, inputs: dict[str, Tensor], module: nn.Module | None) -> Tensor:
        assert isinstance(module, IndexNetModule)
        x = inputs["x"]
        up = x.repeat_interleave(S, dim=2).repeat_interleave(S, dim=3)
        return module.index(inputs["y"]) * up

    def border_mask(self, case: Case) -> Tensor:
        # the context block's 4×4 window (padding 1) reaches one low-res cell past the map; the 2×2 one never
        return window_border(case, 1 if self._hp(case)[2] else 0)

    # -- counts -------------------------------------------------------------------------------------------
    def params_formula(self, case: Case) -> int:
        holistic, nonlinear, context = self._hp(case)
        shapes = _block_shapes(case.cy, holistic, nonlinear, context)
        convs = sum(cout * cin // g * k * k for cin, cout, g, k in shapes)
        return convs + (2 * shapes[1][0] if nonlinear else 0)  # + BatchNorm's weight and bias

    def mac_terms(self, case: Case) -> dict[str, int]:
        holistic, nonlinear, context = self._hp(case)
        lo = case.B * case.H * case.w  # every conv of the block runs at low res (stride 2)
        terms = {f"conv{n}": lo * cout * cin // g * k * k
                 for n, (cin, cout, g, k) in enumerate(_block_shapes(case.cy, holistic, nonlinear, context))}
        terms["apply"] = lo * S * S * case.C  # D ⊙ nearest(x): one product per output element
        return terms

    def min_bytes(self, case: Case) -> int:
        holistic, nonlinear, _ = self._hp(case)
        bn_stats = 2 * _block_shapes(case.cy, holistic, nonlinear, True)[1][0] if nonlinear else 0
        return super().min_bytes(case) + bn_stats * case.torch_dtype.itemsize


INDEXNET = IndexNet()
