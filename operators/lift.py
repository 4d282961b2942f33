"""LiFT (Suri et al., ECCV 2024): one learned 2× block applied repeatedly, fed by a strided image encoding.

Module (official, patch 16):
- image convs: Conv3×3/2 (3→32, bias) → BN → ReLU → Conv3×3/2 (32→32) → BN → ReLU, then a 2×2 max pool
  (patch 16; none for patch 8) — the map at 2× the features' size; then Conv3×3/2 (32→32) → BN → ReLU — the
  map at the features' size;
- [x ⊕ that map] → ConvTranspose 2×2/2 ((C+32) → (C+32)/2, bias) ⊕ the 2×-size map → double conv
  (Conv3×3 no bias → BN → ReLU, twice; to C/2) → Conv1×1 (C/2 → C, bias).
Applied log₂ s times with shared weights; before every iteration after the first the image is bilinearly
upsampled 2× (align_corners False), as the official iterative extractor does — so the last iteration encodes
an image 2^(n−1) times the original size. Not a convex combination: transposed conv, convolutions, ReLU.
One impl: nothing in LiFT materialises more than a convolution's own output; the peak tensor is the first
image conv's output at the last iteration (32 channels at half the upsampled image size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from upbench.cases import Case
from upbench.plugin import HyperParam, Impl

from .vfm_common import VfmOperator


def _cbr(cin: int, cout: int, stride: int, bias: bool) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias), nn.BatchNorm2d(cout), nn.ReLU()]


class LiftModule(nn.Module):
    def __init__(self, C: int, patch: int = 16) -> None:
        super().__init__()
        a = C + 32
        self.image_convs_1 = nn.Sequential(*_cbr(3, 32, 2, True), *_cbr(32, 32, 2, True))
        self.pool = nn.MaxPool2d(2, 2) if patch == 16 else nn.Identity()
        self.image_convs_2 = nn.Sequential(*_cbr(32, 32, 2, True))
        self.up = nn.ConvTranspose2d(a, a // 2, 2, stride=2)
        self.double_conv = nn.Sequential(*_cbr(a // 2 + 32, C // 2, 1, False), *_cbr(C // 2, C // 2, 1, False))
        self.out = nn.Conv2d(C // 2, C, 1)

    def step(self, x: Tensor, image: Tensor) -> Tensor:
        i1 = self.pool(self.image_convs_1(image))
        i2 = self.image_convs_2(i1)
        y = self.up(torch.cat([x, i2], 1))
        return self.out(self.double_conv(torch.cat([y, i1], 1)))

    def forward(self, x: Tensor, image: Tensor, steps: int) -> Tensor:
        for i in range(steps):
            if i:
                image = F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)
            x = self.step(x, image)
        return x


def _official(case: Case, m: LiftModule):
    steps = case.s.bit_length() - 1
    return lambda x, image: m(x, image, steps)


class Lift(VfmOperator):
    name = "lift"
    description = ("LiFT: one 2× block (transposed conv of features ⊕ strided-conv image encoding → double "
                   "conv → 1×1), applied log₂ s times with the image upsampled 2× per extra iteration")
    hyperparams = (HyperParam("patch", 16, "backbone patch size: the guidance image is (patch·H) × (patch·W)",
                              (8, 16)),)
    pow2_scale = True
    impls = (Impl("official", _official, "the official module (eval-mode BatchNorm), iterated as the official "
                  "extractor does"),)
    model_impls = ("official",)

    def check(self, case: Case) -> str | None:
        why = super().check(case)
        if why is None and case.C < 2:
            return f"lift needs C ≥ 2 (its decoder works at C/2; got C={case.C})"
        return why

    def module(self, case: Case) -> nn.Module:
        return LiftModule(case.C, int(self.hp(case)["patch"]))

    def reference(self, case: Case, inputs: dict[str, Tensor], module: nn.Module | None) -> Tensor:
        assert isinstance(module, LiftModule)
        return module(inputs["x"], inputs["image"], case.s.bit_length() - 1)

    def params_formula(self, case: Case) -> int:
        C = case.C
        a, c2 = C + 32, C // 2
        img = (27 * 32 + 32 + 64) + 2 * (9 * 32 * 32 + 32 + 64)
        return img + 4 * a * (a // 2) + a // 2 + 9 * (a // 2 + 32) * c2 + 2 * c2 + 9 * c2 * c2 + 2 * c2 \
            + c2 * C + C

    def mac_terms(self, case: Case) -> dict[str, int]:
        C = case.C
        a, c2 = C + 32, C // 2
        ih, iw = self.image_hw(case)
        terms = dict.fromkeys(("image_resize", "image_convs", "up", "double_conv", "out"), 0)
        h, w = case.H, case.w
        for i in range(case.s.bit_length() - 1):
            if i:
                terms["image_resize"] += 4 * 3 * case.B * ih * iw
            s1 = ((ih + 1) // 2) * ((iw + 1) // 2)
            s2 = ((ih + 3) // 4) * ((iw + 3) // 4)
            terms["image_convs"] += case.B * (s1 * 27 * 32 + s2 * 9 * 32 * 32 + h * w * 9 * 32 * 32)
            lo = case.B * h * w
            terms["up"] += lo * a * (a // 2) * 4
            terms["double_conv"] += 4 * lo * (9 * (a // 2 + 32) * c2 + 9 * c2 * c2)
            terms["out"] += 4 * lo * c2 * C
            h, w, ih, iw = 2 * h, 2 * w, 2 * ih, 2 * iw
        return terms


LIFT = Lift()
