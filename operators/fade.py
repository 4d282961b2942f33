"""FADE: fusing the assets of decoder (x) and encoder (y), DESIGN.md §4; needs Cy = C.

Kernel logits = enc(Conv1×1_en(y)) at high res + nearest_up(enc(Conv1×1_de(x))) at low res, where enc is one
shared 3×3 conv (embedding 64 → K²) — the "semi-shift" form: each high-res pixel sees the 3×3 low-res
neighbourhood of its parent through the decoder branch. Conv1×1_en has a bias, Conv1×1_de none, and enc's bias
is added once (on the high-res branch; adding it on both would only double it). Softmax over the K² = 25
slots, reassembly of x, then the gate g = σ(nearest_up(Conv1×1(C→1, bias)(x))): out = g·y + (1−g)·reassembled.
Init: torch's defaults (none is prescribed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from upbench.cases import Case
from upbench.plugin import HyperParam, Operator

from .reassembly import (
    LogitsFn,
    ReassembleFn,
    check_positive_ints,
    module_impls,
    nearest_up,
    reassemble_lean,
    reassemble_reference,
)


class FadeModule(nn.Module):
    def __init__(self, C: int, K: int, s: int, emb: int = 64) -> None:
        super().__init__()
        self.K, self.s = K, s
        self.en = nn.Conv2d(C, emb, 1)
        self.de = nn.Conv2d(C, emb, 1, bias=False)
        self.encoder = nn.Conv2d(emb, K * K, 3, padding=1)
        self.gate = nn.Conv2d(C, 1, 1)

    def logits(self, x: Tensor, y: Tensor) -> Tensor:
        """Kernel logits (B, K², sH, sW): the high-res branch plus the nearest-upsampled low-res one."""
        hi = self.encoder(self.en(y))
        lo = F.conv2d(self.de(x), self.encoder.weight, None, padding=1)
        return hi + nearest_up(lo, self.s)

    def kernels(self, x: Tensor, y: Tensor) -> Tensor:
        """Reassembly kernels (B, K², sH, sW), summing to 1 over the K² slots."""
        return self.logits(x, y).softmax(1)

    def forward(self, x: Tensor, y: Tensor, reassemble: ReassembleFn = reassemble_lean,
                fused: LogitsFn | None = None) -> Tensor:
        if fused is not None:  # softmax inside the reassembly kernel: no normalised kernel map in memory
            r = fused(x, self.logits(x, y), self.K, self.s, 1)
        else:
            r = reassemble(x, self.kernels(x, y), self.K, self.s, 1)
        B, C, oh, ow = r.shape
        H, W = oh // self.s, ow // self.s
        # The gate broadcasts over the s×s children instead of materialising its nearest upsampling.
        g = torch.sigmoid(self.gate(x)).view(B, 1, H, 1, W, 1)
        blend = g * y.view(B, C, H, self.s, W, self.s) + (1 - g) * r.view(B, C, H, self.s, W, self.s)
        return blend.view(B, C, oh, ow)


class Fade(Operator):
    name = "fade"
    properties = ("convex",)  # when x and y are one constant: g·y + (1−g)·reassembled; borders exempt
    description = ("FADE: semi-shift kernel generator (Conv1×1 en on y + Conv1×1 de on x, shared 3×3 encoder, "
                   "embedding 64), softmax over K², reassembly of x, gate σ(Conv1×1(x)) blending y; Cy = C")
    guided = True
    uses_Cy = False  # y and x must have the same channels, so Cy is not a free axis
    hyperparams = (HyperParam("emb", 64, "embedding channels of the 1×1 convs"),)
    impls = module_impls(fused=True)  # the kernels are softmax(logits): DESIGN.md §4
    model_impls = ("cupy", "cpu-kernel", "lean", "unfold")

    def _emb(self, case: Case) -> int:
        return int(case.params.get("emb", 64))

    def check(self, case: Case) -> str | None:
        why = super().check(case)
        if why:
            return why
        if case.cy != case.C:
            return (f"fade blends y into the output, so it needs Cy == C (got Cy={case.cy}, C={case.C}); "
                    "set Cy = C")
        return check_positive_ints(self, case, ("emb",))

    def module(self, case: Case) -> nn.Module:
        return FadeModule(case.C, case.K, case.s, self._emb(case))

    def reference(self, case: Case, inputs: dict[str, Tensor], module: nn.Module | None) -> Tensor:
        assert isinstance(module, FadeModule)
        x, y, s = inputs["x"], inputs["y"], case.s
        up = lambda t: t.repeat_interleave(s, 2).repeat_interleave(s, 3)  # noqa: E731
        r = reassemble_reference(x, module.kernels(x, y), case.K, s, 1)
        g = up(torch.sigmoid(module.gate(x)))
        return g * y + (1 - g) * r

    # -- counts -------------------------------------------------------------------------------------------
    def params_formula(self, case: Case) -> int:
        C, e, KK = case.C, self._emb(case), case.K ** 2
        return (C + 1) * e + C * e + 9 * e * KK + KK + C + 1

    def mac_terms(self, case: Case) -> dict[str, int]:
        lo = case.B * case.H * case.w
        hi = lo * case.s ** 2
        C, e, KK = case.C, self._emb(case), case.K ** 2
        return {
            "en": hi * C * e,
            "de": lo * C * e,
            "encoder_hi": hi * 9 * e * KK,
            "encoder_lo": lo * 9 * e * KK,
            "gate": lo * C,
            "reassembly": hi * KK * C,
            "blend": 2 * hi * C,  # g·y and (1−g)·r
        }


FADE = Fade()
