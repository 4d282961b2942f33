"""UPLiFT (Walmer et al., 2025): iterated 2× decoder whose output is a local attention over the low-res map.

Module (the shipped DINOv3-S+/16 configuration: shared encoder, attender 17, one up step per iteration):
- encoder on the image, all at image resolution (no down-sampling steps): five single-conv blocks
  Conv3×3 (no bias) → BatchNorm → ReLU → Conv1×1 (bias), widths 16, 32, 64, 128, 128, each with the
  channel-adapting residual (add the input, truncated or zero-padded to the block's width); run once, its two
  deepest maps reused by every iteration (nearest-resized to the sizes needed);
- each 2× iteration on the current map x (C, h×w): a double-conv block (Conv3×3 → BN → ReLU, twice, no bias,
  then Conv1×1 with bias; width 64; same residual) on [x ⊕ enc₄], a ConvTranspose 2×2/2 (64→64) plus the
  bilinear (align_corners) upsampling of its input, a double-conv block on [· ⊕ enc₃] → guide (64, 2h×2w);
- the local attender: logits = Conv1×1(64→17)(guide) + guide's first 17 channels, softmax over 17 fixed
  offsets {(0,0), (±1,0), (0,±1), (±1,±1), (±2,0), (0,±2), (±2,±2)}; output at (i, j) = Σ_d a_d · x at
  parent (⌊i/2⌋, ⌊j/2⌋) + offset d, replicate padding at the borders. A convex combination of x.
Impls: ``official`` stacks the 17 shifted maps and multiplies them with the weights broadcast over the
children — a (B, C, 17, 2h, 2w) product — before summing; ``lean`` accumulates the 17 products in place; the
kernel impls (``cupy``, ``cpu-kernel`` and their ``-fused`` forms) run softmax and aggregation on the
window_attn kernel family (docs/kernels.md) with the ``clamp`` border rule and the logits as given weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from upbench.cases import Case
from upbench.plugin import Impl

from . import window_attn_kernels as wk
from .vfm_common import PATCH, VfmOperator

OFFSETS = ((-2, -2), (-2, 0), (-2, 2), (-1, -1), (-1, 0), (-1, 1), (0, -2), (0, -1), (0, 0), (0, 1), (0, 2),
           (1, -1), (1, 0), (1, 1), (2, -2), (2, 0), (2, 2))
ENC_WIDTHS = (16, 32, 64, 128, 128)
DEC = 64


def residual_auto(x: Tensor, y: Tensor) -> Tensor:
    """y plus x truncated or zero-padded to y's channels."""
    cx, cy = x.shape[1], y.shape[1]
    if cx >= cy:
        return x[:, :cy] + y
    return torch.cat([y[:, :cx] + x, y[:, cx:]], 1)


class ConvBlock(nn.Module):
    """``n`` (Conv3×3 no bias → BN → ReLU), then Conv1×1 with bias; channel-adapting residual."""

    def __init__(self, cin: int, ch: int, n: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [nn.Conv2d(cin if i == 0 else ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch),
                       nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.Conv2d(ch, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        return residual_auto(x, self.body(x))


class UpliftModule(nn.Module):
    def __init__(self, C: int) -> None:
        super().__init__()
        widths = (3, *ENC_WIDTHS)
        self.encoder = nn.ModuleList(ConvBlock(widths[i], widths[i + 1], 1) for i in range(len(ENC_WIDTHS)))
        self.block0 = ConvBlock(C + ENC_WIDTHS[-1], DEC, 2)
        self.up = nn.ConvTranspose2d(DEC, DEC, 2, stride=2)
        self.block1 = ConvBlock(DEC + ENC_WIDTHS[-2], DEC, 2)
        self.attend = nn.Conv2d(DEC, len(OFFSETS), 1)

    def encode(self, image: Tensor) -> tuple[Tensor, Tensor]:
        feats = []
        for blk in self.encoder:
            image = blk(image)
            feats.append(image)
        return feats[-1], feats[-2]

    def weights(self, x: Tensor, e4: Tensor, e3: Tensor) -> Tensor:
        """Attender weights (B, 17, 2h, 2w) for the map x, softmax over the 17 offsets."""
        return self.logits(x, e4, e3).softmax(1)

    def logits(self, x: Tensor, e4: Tensor, e3: Tensor) -> Tensor:
        """The attender's logits (B, 17, 2h, 2w), before the softmax."""
        h, w = x.shape[-2:]
        g = self.block0(torch.cat([x, F.interpolate(e4, size=(h, w), mode="nearest")], 1))
        g = self.up(g) + F.interpolate(g, scale_factor=2, mode="bilinear", align_corners=True)
        g = self.block1(torch.cat([g, F.interpolate(e3, size=(2 * h, 2 * w), mode="nearest")], 1))
        return residual_auto(g, self.attend(g))




def attend_stacked(x: Tensor, a: Tensor) -> Tensor:
    B, C, h, w = x.shape
    xp = F.pad(x, (2, 2, 2, 2), mode="replicate")
    xs = torch.stack([xp[:, :, 2 + dy:2 + dy + h, 2 + dx:2 + dx + w] for dy, dx in OFFSETS], 2)
    prod = xs[:, :, :, :, None, :, None] * a.view(B, 1, len(OFFSETS), h, 2, w, 2)
    return prod.sum(2).reshape(B, C, 2 * h, 2 * w)


def attend_inplace(x: Tensor, a: Tensor) -> Tensor:
    B, C, h, w = x.shape
    xp = F.pad(x, (2, 2, 2, 2), mode="replicate")
    out = x.new_zeros(B, C, h, 2, w, 2)
    av = a.view(B, len(OFFSETS), 1, h, 2, w, 2)
    for d, (dy, dx) in enumerate(OFFSETS):
        out.addcmul_(xp[:, :, 2 + dy:2 + dy + h, None, 2 + dx:2 + dx + w, None], av[:, d])
    return out.view(B, C, 2 * h, 2 * w)


def attend_gather(x: Tensor, a: Tensor) -> Tensor:
    """The definition: each output pixel's 17 neighbours of its parent, clamped indices."""
    B, C, h, w = x.shape
    i, j = torch.arange(2 * h) // 2, torch.arange(2 * w) // 2
    out = torch.zeros(B, C, 2 * h, 2 * w, dtype=x.dtype)
    for d, (dy, dx) in enumerate(OFFSETS):
        rows, cols = (i + dy).clamp(0, h - 1), (j + dx).clamp(0, w - 1)
        out += x[:, :, rows[:, None], cols[None, :]] * a[:, d:d + 1]
    return out


WINDOW = wk.Window(OFFSETS, "clamp")  # replicate padding: the slot's row and column clamped onto the map


def _kernel_run(case: Case, m: UpliftModule, fused: bool):
    """The attender on the window_attn kernels: given logits over the 17 offsets, clamp border rule, ×2 per step."""
    steps = case.s.bit_length() - 1
    cl = wk.channels_last

    def run(x: Tensor, image: Tensor) -> Tensor:
        e4, e3 = m.encode(image)
        for _ in range(steps):
            x = wk.nchw(wk.attention_given(cl(m.logits(x, e4, e3)), cl(x), WINDOW, 2, fused=fused))
        return x
    return run


def run_uplift(m: UpliftModule, x: Tensor, image: Tensor, steps: int, attend) -> Tensor:
    e4, e3 = m.encode(image)
    for _ in range(steps):
        x = attend(x, m.weights(x, e4, e3))
    return x


def _factory(attend):
    def factory(case: Case, m: UpliftModule):
        steps = case.s.bit_length() - 1
        return lambda x, image: run_uplift(m, x, image, steps, attend)
    return factory


class Uplift(VfmOperator):
    name = "uplift"
    description = ("UPLiFT: image encoder at full resolution (shared), iterated 2× conv decoder whose guide "
                   "drives a 17-offset local attender over the current map (convex)")
    properties = ("convex", "exact_on_constant")  # each 2× step: a softmax over 17 neighbours of the current map
    hyperparams = (PATCH,)
    pow2_scale = True
    impls = (
        Impl("official", _factory(attend_stacked), "as the official attender (not low_mem): the 17 shifted "
             "maps stacked and multiplied with the weights into a (B, C, 17, 2h, 2w) product, then summed"),
        Impl("lean", _factory(attend_inplace), "17 in-place multiply-adds broadcast over the 2×2 children: "
             "no stacked copy, no 17× product"),
        *wk.kernel_impls(_kernel_run, "the 17 offsets with given logits, clamp border rule"),
    )
    model_impls = ("lean", "official")

    def module(self, case: Case) -> nn.Module:
        return UpliftModule(case.C)

    def reference(self, case: Case, inputs: dict[str, Tensor], module: nn.Module | None) -> Tensor:
        assert isinstance(module, UpliftModule)
        return run_uplift(module, inputs["x"], inputs["image"], case.s.bit_length() - 1, attend_gather)

    def params_formula(self, case: Case) -> int:
        widths = (3, *ENC_WIDTHS)
        enc = sum(9 * a * b + 2 * b + b * b + b for a, b in zip(widths, widths[1:], strict=False))

        def double(cin: int) -> int:
            return 9 * cin * DEC + 2 * DEC + 9 * DEC * DEC + 2 * DEC + DEC * DEC + DEC

        n = len(OFFSETS)
        return enc + double(case.C + ENC_WIDTHS[-1]) + 4 * DEC * DEC + DEC + double(DEC + ENC_WIDTHS[-2]) \
            + DEC * n + n

    def mac_terms(self, case: Case) -> dict[str, int]:
        ih, iw = self.image_hw(case)
        widths = (3, *ENC_WIDTHS)
        n = len(OFFSETS)
        terms = {"encoder": case.B * ih * iw * sum(9 * a * b + b * b for a, b in zip(widths, widths[1:],
                                                                                     strict=False)),
                 "block0": 0, "up": 0, "block1": 0, "attend_logits": 0, "attend": 0}
        lo = case.B * case.H * case.w
        for _ in range(case.s.bit_length() - 1):
            terms["block0"] += lo * (9 * (case.C + ENC_WIDTHS[-1]) * DEC + 9 * DEC * DEC + DEC * DEC)
            terms["up"] += lo * (4 * DEC * DEC + 4 * 4 * DEC)  # transposed conv + bilinear residual taps
            terms["block1"] += 4 * lo * (9 * (DEC + ENC_WIDTHS[-2]) * DEC + 9 * DEC * DEC + DEC * DEC)
            terms["attend_logits"] += 4 * lo * DEC * n
            terms["attend"] += 4 * lo * n * case.C
            lo *= 4
        return terms


UPLIFT = Uplift()
