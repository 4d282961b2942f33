"""FeatUp's JBU stack (Fu et al., ICLR 2024): learned joint-bilateral 2× layers guided by the image.

Layer (official JBULearnedRange, radius 3 → 7×7 window, key width 32), guidance g = adaptive average pool of the
image to the layer's output size (2h × 2w):
- range kernel: p = Conv1×1(32)(GELU(Conv1×1(3→32)(g))); logits at each pixel = exp(t)·⟨p(pixel + offset),
  p(pixel)⟩ over the 49 offsets, p reflect-padded; t learned (clamped so e^t ∈ [1e-4, 1e4]); softmax over 49;
- spatial kernel: exp(−(u² + v²)/(2σ²)) on the 7×7 grid u, v ∈ linspace(−1, 1, 7), σ learned;
- kernel = range · spatial, normalised to sum 1 (denominator clamped at 1e-7), plus
  0.1·Conv1×1(49→49)(GELU(Conv1×1(49+3 → 49)([kernel ⊕ g]))) — the fix-up, so weights need not be convex;
- output = Σ over the 49 offsets of kernel × the bicubic 2× upsampling of x (align_corners False),
  reflect-padded by 3.
The stack applies one layer per 2× step (the official JBUStack has four: s = 16), then
out + 0.1·Conv1×1(C→C)(out). Not convex: the fix-up terms, the bicubic's negative taps, the final conv.
Impls: ``official`` builds the range kernel with nn.Unfold as the official code does, and applies the kernel
with unfold (the official code ships a CUDA/C++ adaptive-conv kernel for that step; unfold is its pure-torch
form); ``lean`` loops over the 49 offsets with shifted views and in-place multiply-adds, and folds the final
fix-up into one convolution (weight 0.1·W + I, bias 0.1·b).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from upbench.cases import Case
from upbench.plugin import DEFAULT_TOLERANCE, HyperParam, Impl

from .vfm_common import PATCH, VfmOperator

KEY = 32


class JbuLayer(nn.Module):
    def __init__(self, radius: int = 3) -> None:
        super().__init__()
        self.r = radius
        d2 = (2 * radius + 1) ** 2
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))
        self.range_proj = nn.Sequential(nn.Conv2d(3, KEY, 1), nn.GELU(), nn.Conv2d(KEY, KEY, 1))
        self.fixup_proj = nn.Sequential(nn.Conv2d(3 + d2, d2, 1), nn.GELU(), nn.Conv2d(d2, d2, 1))

    def spatial(self, like: Tensor) -> Tensor:
        d = 2 * self.r + 1
        t = torch.linspace(-1, 1, d, dtype=like.dtype, device=like.device)
        u, v = torch.meshgrid(t, t, indexing="ij")
        return torch.exp(-(u.square() + v.square()) / (2 * self.sigma_spatial ** 2)).reshape(1, d * d, 1, 1)

    def kernel(self, g: Tensor, unfold: bool) -> Tensor:
        """(B, 49, GH, GW) weights for guidance g (B, 3, GH, GW)."""
        B, _, GH, GW = g.shape
        d, r = 2 * self.r + 1, self.r
        p = self.range_proj(g)
        pp = F.pad(p, [r] * 4, mode="reflect")
        if unfold:
            win = F.unfold(pp, d).view(B, KEY, d * d, GH, GW)
            logits = torch.einsum("bcphw,bchw->bphw", win, p)
        else:
            logits = torch.stack([(pp[:, :, a:a + GH, b:b + GW] * p).sum(1) for a in range(d) for b in range(d)], 1)
        temp = self.range_temp.exp().clamp(1e-4, 1e4)
        k = (temp * logits).softmax(1) * self.spatial(g)
        k = k / k.sum(1, keepdim=True).clamp_min(1e-7)
        return k + 0.1 * self.fixup_proj(torch.cat([k, g], 1))

    def forward(self, x: Tensor, g: Tensor, unfold: bool) -> Tensor:
        GH, GW = g.shape[-2:]
        k = self.kernel(g, unfold)
        src = F.pad(F.interpolate(x, (GH, GW), mode="bicubic", align_corners=False), [self.r] * 4, mode="reflect")
        B, C = x.shape[:2]
        d = 2 * self.r + 1
        if unfold:
            return torch.einsum("bcphw,bphw->bchw", F.unfold(src, d).view(B, C, d * d, GH, GW), k)
        out = x.new_zeros(B, C, GH, GW)
        for a in range(d):
            for b in range(d):
                out.addcmul_(src[:, :, a:a + GH, b:b + GW], k[:, a * d + b:a * d + b + 1])
        return out


class JbuStack(nn.Module):
    def __init__(self, C: int, steps: int, radius: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(JbuLayer(radius) for _ in range(steps))
        self.fixup = nn.Conv2d(C, C, 1)

    def forward(self, x: Tensor, image: Tensor, lean: bool) -> Tensor:
        for layer in self.layers:
            h, w = x.shape[-2:]
            x = layer(x, F.adaptive_avg_pool2d(image, (2 * h, 2 * w)), unfold=not lean)
        if not lean:
            return 0.1 * self.fixup(x) + x
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device).view(*self.fixup.weight.shape)
        return F.conv2d(x, 0.1 * self.fixup.weight + eye, 0.1 * self.fixup.bias)


def _factory(lean: bool):
    def factory(case: Case, m: JbuStack):
        return lambda x, image: m(x, image, lean)
    return factory


class FeatUpJbu(VfmOperator):
    name = "featup-jbu"
    description = ("FeatUp JBU stack: per 2× step a joint-bilateral layer (learned range kernel × Gaussian "
                   "spatial kernel over 7×7, normalised, + fix-up) on the bicubic-upsampled features")
    hyperparams = (PATCH, HyperParam("radius", 3, "window radius (7×7 for 3)"))
    pow2_scale = True
    min_low_res = 2  # reflect padding of the 2h×2w maps by 3 needs 2h > 3
    # fp32 agreement: the bicubic and 49-tap sums accumulate ~1e-4 relative error on perturbed weights.
    tolerance = {**DEFAULT_TOLERANCE, "float32": 3e-4}
    impls = (
        Impl("official", _factory(False), "nn.Unfold for the range kernel (as the official code) and unfold "
             "for the adaptive convolution (the official CUDA/C++ kernel's pure-torch form): 49× tensors"),
        Impl("lean", _factory(True), "49 shifted views with in-place multiply-adds (no unfold), final fix-up "
             "folded into one convolution"),
    )
    model_impls = ("lean", "official")

    def _radius(self, case: Case) -> int:
        return int(self.hp(case)["radius"])

    def check(self, case: Case) -> str | None:
        why = super().check(case)
        if why:
            return why
        r = self._radius(case)
        if r < 1 or 2 * min(case.H, case.w) <= r:
            return f"featup-jbu needs radius ≥ 1 and below 2·min(H, W) for reflect padding (got radius={r})"
        return None

    def module(self, case: Case) -> nn.Module:
        return JbuStack(case.C, case.s.bit_length() - 1, self._radius(case))

    def reference(self, case: Case, inputs: dict[str, Tensor], module: nn.Module | None) -> Tensor:
        """Each output pixel's 49 weights and 49 source taps gathered by index, then summed."""
        assert isinstance(module, JbuStack)
        x, image = inputs["x"], inputs["image"]
        for layer in module.layers:
            h, w = x.shape[-2:]
            g = F.adaptive_avg_pool2d(image, (2 * h, 2 * w))
            k = layer.kernel(g, unfold=False)
            src = F.interpolate(x, (2 * h, 2 * w), mode="bicubic", align_corners=False)
            d, r = 2 * layer.r + 1, layer.r

            def reflect(i: Tensor, n: int) -> Tensor:
                i = i.abs()
                return torch.where(i > n - 1, 2 * (n - 1) - i, i)

            out = torch.zeros_like(src)
            for a in range(d):
                rows = reflect(torch.arange(2 * h) + a - r, 2 * h)
                for b in range(d):
                    cols = reflect(torch.arange(2 * w) + b - r, 2 * w)
                    out += src[:, :, rows[:, None], cols[None, :]] * k[:, a * d + b:a * d + b + 1]
            x = out
        return x + 0.1 * module.fixup(x)

    def params_formula(self, case: Case) -> int:
        d2 = (2 * self._radius(case) + 1) ** 2
        layer = 2 + (3 * KEY + KEY + KEY * KEY + KEY) + ((3 + d2) * d2 + d2 + d2 * d2 + d2)
        return (case.s.bit_length() - 1) * layer + case.C * case.C + case.C

    def mac_terms(self, case: Case) -> dict[str, int]:
        d2 = (2 * self._radius(case) + 1) ** 2
        terms = dict.fromkeys(("range_proj", "range_logits", "fixup_proj", "bicubic", "aggregate"), 0)
        P = case.B * case.H * case.w
        for _ in range(case.s.bit_length() - 1):
            P *= 4
            terms["range_proj"] += P * (3 * KEY + KEY * KEY)
            terms["range_logits"] += P * d2 * KEY
            terms["fixup_proj"] += P * ((3 + d2) * d2 + d2 * d2)
            terms["bicubic"] += P * case.C * 16
            terms["aggregate"] += P * d2 * case.C
        terms["final_fixup"] = P * case.C * case.C
        return terms


FEATUP_JBU = FeatUpJbu()
