"""DySample: upsampling by learned point sampling (guidance-free), DESIGN.md §4.

Offsets in low-res pixel units, 2·G·s² per low-res pixel (x components first, then y; within each,
channel g·s² + t for group g and sub-pixel t = i·s + j), plus the static sub-pixel position of child (i, j):
((j + ½)/s − ½, (i + ½)/s − ½), i.e. ±0.25 for s = 2. Styles: "lp" (Conv1×1 C → 2·G·s² at low res) or "pl"
(pixel_shuffle x first, Conv1×1 C/s² → 2·G at high res, pixel_unshuffle back). Scope: static (× 0.25) or
dynamic (× 0.5·σ(a second, zero-initialised conv of the same shape)). The pixel-shuffled positions drive one
grid_sample per group of C/G contiguous channels (bilinear, align_corners=False, border padding). Offset conv
init normal std 0.001, bias 0. With zero offsets the result is exactly bilinear upsampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from upbench.cases import Case
from upbench.plugin import DEFAULT_TOLERANCE, HyperParam, Impl, Operator

from .reassembly import check_positive_ints


def static_positions(s: int, G: int) -> Tensor:
    """(1, 2·G·s², 1, 1) static offsets of the s×s children of a low-res pixel, in its pixel units."""
    h = (torch.arange(s, dtype=torch.float64) + 0.5) / s - 0.5
    px = h[None, :].expand(s, s)  # x offset follows the column j
    py = h[:, None].expand(s, s)  # y offset follows the row i
    return torch.stack([px, py]).reshape(2, 1, s * s).expand(2, G, s * s).reshape(1, -1, 1, 1).float()


class DySampleModule(nn.Module):
    def __init__(self, C: int, s: int, groups: int = 4, style: str = "lp", dynamic: bool = False) -> None:
        super().__init__()
        self.s, self.G, self.style = s, groups, style
        cin, cout = (C, 2 * groups * s * s) if style == "lp" else (C // (s * s), 2 * groups)
        self.offset = nn.Conv2d(cin, cout, 1)
        nn.init.normal_(self.offset.weight, std=0.001)
        nn.init.zeros_(self.offset.bias)
        self.scope = nn.Conv2d(cin, cout, 1) if dynamic else None
        if self.scope is not None:
            nn.init.zeros_(self.scope.weight)
            nn.init.zeros_(self.scope.bias)
        self.register_buffer("init_pos", static_positions(s, groups), persistent=False)

    def offsets(self, x: Tensor) -> Tensor:
        """Total offsets (B, 2·G·s², H, W) relative to each low-res pixel centre, in low-res pixels."""
        feat = x if self.style == "lp" else F.pixel_shuffle(x, self.s)
        o = self.offset(feat)
        o = o * (0.5 * torch.sigmoid(self.scope(feat))) if self.scope is not None else o * 0.25
        if self.style == "pl":
            o = F.pixel_unshuffle(o, self.s)
        return o + self.init_pos

    def positions(self, x: Tensor) -> Tensor:
        """Source positions (B, G, sH, sW, 2) as (column, row) in low-res pixel-index coordinates."""
        B, _, H, W = x.shape
        o = self.offsets(x).view(B, 2, -1, H, W)
        base = torch.stack(torch.meshgrid(torch.arange(W, device=x.device, dtype=x.dtype),
                                          torch.arange(H, device=x.device, dtype=x.dtype), indexing="xy"))
        p = (o + base[None, :, None]).reshape(B, -1, H, W)  # child position = parent centre + offset
        p = F.pixel_shuffle(p, self.s).view(B, 2, self.G, H * self.s, W * self.s)
        return p.permute(0, 2, 3, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        p = self.positions(x)
        # grid_sample with align_corners=False maps pixel index u to (2u + 1)/size − 1.
        size = torch.tensor([W, H], device=x.device, dtype=x.dtype)
        grid = ((2 * p + 1) / size - 1).flatten(0, 1)
        out = F.grid_sample(x.reshape(B * self.G, C // self.G, H, W), grid, mode="bilinear",
                            padding_mode="border", align_corners=False)
        return out.view(B, C, H * self.s, W * self.s)


def sample_reference(x: Tensor, p: Tensor) -> Tensor:
    """Bilinear sampling written out: p (B, G, sH, sW, 2) clamped to the map (border padding), 4 taps."""
    B, C, H, W = x.shape
    G = p.shape[1]
    px, py = p[..., 0].clamp(0, W - 1), p[..., 1].clamp(0, H - 1)
    x0, y0 = px.floor(), py.floor()
    fx, fy = (px - x0)[:, :, None], (py - y0)[:, :, None]
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=W - 1), (y0 + 1).clamp(max=H - 1)
    xg = x.view(B, G, C // G, H * W)

    def tap(yy: Tensor, xx: Tensor) -> Tensor:
        idx = (yy * W + xx).flatten(2)[:, :, None].expand(B, G, C // G, -1)
        return xg.gather(3, idx).view(B, G, C // G, *yy.shape[2:])

    out = (tap(y0, x0) * (1 - fx) * (1 - fy) + tap(y0, x1) * fx * (1 - fy)
           + tap(y1, x0) * (1 - fx) * fy + tap(y1, x1) * fx * fy)
    return out.reshape(B, C, *out.shape[3:])


def _grid_sample(case: Case, module: nn.Module | None):
    assert isinstance(module, DySampleModule)
    return module


class DySample(Operator):
    name = "dysample"
    description = ("DySample: Conv1×1 offsets (style lp or pl, static 0.25 or dynamic 0.5·σ scope) + static "
                   "sub-pixel positions, one bilinear grid_sample per group (G=4, border padding)")
    uses_K = False
    hyperparams = (
        HyperParam("style", "lp", "lp: conv then pixel shuffle; pl: pixel shuffle then conv", ("lp", "pl")),
        HyperParam("dynamic", False, "dynamic scope 0.5·σ(conv(x)) instead of the static 0.25", (True, False)),
        HyperParam("groups", 4, "channel groups with their own offsets (C must divide)"),
    )
    impls = (Impl("grid_sample", _grid_sample, "F.grid_sample per group"),)
    # grid_sample needs the grid in the input's dtype, so half-precision runs quantise the sampling positions
    # (fp16: ~2⁻¹²·W/2 px, bf16: ~2⁻⁹·W/2 px); on noise inputs that alone is a few % of the output RMS.
    tolerance = {**DEFAULT_TOLERANCE, "float16": 1e-1, "bfloat16": 5e-1}

    def _hp(self, case: Case) -> tuple[str, bool, int]:
        p = {**self.defaults(), **case.params}
        return str(p["style"]), bool(p["dynamic"]), int(p["groups"])

    def check(self, case: Case) -> str | None:
        why = super().check(case)
        if why:
            return why
        why = check_positive_ints(self, case, ("groups",))
        if why:
            return why
        style, _, G = self._hp(case)
        if case.C % G:
            return f"dysample with groups={G} needs C divisible by {G} (got C={case.C}); pick groups dividing C"
        if style == "pl" and case.C % case.s ** 2:
            return (f"dysample style pl pixel-shuffles x first, so it needs C divisible by s²={case.s ** 2} "
                    f"(got C={case.C}); use style lp")
        return None

    def module(self, case: Case) -> nn.Module:
        style, dynamic, G = self._hp(case)
        return DySampleModule(case.C, case.s, G, style, dynamic)

    def reference(self, case: Case, inputs: dict[str, Tensor], module: nn.Module | None) -> Tensor:
        assert isinstance(module, DySampleModule)
        x = inputs["x"]
        return sample_reference(x, module.positions(x))

    # -- counts -------------------------------------------------------------------------------------------
    def params_formula(self, case: Case) -> int:
        style, dynamic, G = self._hp(case)
        s2 = case.s ** 2
        n = (case.C + 1) * 2 * G * s2 if style == "lp" else (case.C // s2 + 1) * 2 * G
        return 2 * n if dynamic else n

    def mac_terms(self, case: Case) -> dict[str, int]:
        style, dynamic, G = self._hp(case)
        lo = case.B * case.H * case.w
        # lp: C → 2·G·s² at each low-res pixel; pl: C/s² → 2·G at each of the s² high-res pixels.
        terms = {"offset": lo * case.C * 2 * G * (case.s ** 2 if style == "lp" else 1)}
        if dynamic:
            terms |= {"scope": terms["offset"], "scope_product": lo * 2 * G * case.s ** 2}
        terms["sampling"] = 4 * lo * case.s ** 2 * case.C  # 4 bilinear taps per output element
        return terms


DYSAMPLE = DySample()
