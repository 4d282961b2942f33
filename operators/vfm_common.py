"""What the foundation-model feature upsamplers share: inputs, counts, encoder blocks, lean attention.

This family upsamples the frozen patch features x (B, C, h, w) of a vision foundation model, guided by the RGB
image (B, 3, h·patch, w·patch) the features were computed from; the output is (B, C, s·h, s·w). The image size
is derived from the low-res size and the ``patch`` hyperparameter (16: 28² tokens ↔ a 448² image), so the
scale axis stays the ratio output/low-res as for every other operator.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from upbench.cases import Case
from upbench.plugin import HyperParam, Operator

PATCH = HyperParam("patch", 16, "backbone patch size: the guidance image is (patch·H) × (patch·W)")

# Lean attention bounds the attention weights it holds at once: this many elements per query chunk, or a
# sixteenth of the output's elements when that is larger (weights and their softmax stay a small fraction).
CHUNK_ELEMENTS = 1 << 22


class VfmOperator(Operator):
    """Base of the family: inputs x and image, no kernel-size or Cy axis, image-guided counts."""

    family = "foundation"
    uses_K = False
    uses_Cy = False
    pow2_scale = False  # iterated 2× designs need s = 2, 4, 8, …
    min_low_res = 1

    def hp(self, case: Case) -> dict:
        return {**self.defaults(), **case.params}

    def image_hw(self, case: Case) -> tuple[int, int]:
        p = int(self.hp(case)["patch"])
        return case.H * p, case.w * p

    def check(self, case: Case) -> str | None:
        why = super().check(case)
        if why:
            return why
        p = self.hp(case)["patch"]
        if isinstance(p, bool) or not isinstance(p, int) or p < 1:
            return f"{self.name} needs patch to be a positive integer (got patch={p!r})"
        if self.pow2_scale and (case.s < 2 or case.s & (case.s - 1)):
            return f"{self.name} upsamples in 2× steps, so s must be 2, 4, 8, … (got s={case.s})"
        if min(case.H, case.w) < self.min_low_res:
            return (f"{self.name} needs a low-res map of at least {self.min_low_res}×{self.min_low_res} "
                    f"(got {case.H}×{case.w})")
        return None

    def inputs(self, case: Case, gen: torch.Generator) -> dict[str, Tensor]:
        ih, iw = self.image_hw(case)
        return {"x": torch.randn(case.B, case.C, case.H, case.w, generator=gen),
                "image": torch.randn(case.B, 3, ih, iw, generator=gen)}

    def params_formula(self, case: Case) -> int:
        raise NotImplementedError

    def params(self, case: Case) -> int:
        return self.params_formula(case)

    def mac_terms(self, case: Case) -> dict[str, int]:
        raise NotImplementedError

    def macs(self, case: Case) -> int:
        return sum(self.mac_terms(case).values())

    def min_bytes(self, case: Case) -> int:
        oh, ow = case.out_hw
        ih, iw = self.image_hw(case)
        n = case.B * (case.C * case.H * case.w + 3 * ih * iw + case.C * oh * ow) + self.params_formula(case)
        return n * case.torch_dtype.itemsize


# -- building blocks -------------------------------------------------------------------------------------------
def conv(cin: int, cout: int, k: int, bias: bool = True, reflect: bool = False, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias,
                     padding_mode="reflect" if reflect and k > 1 else "zeros")


class GNBlock(nn.Module):
    """GroupNorm(8) → SiLU → conv → GroupNorm(8) → SiLU → conv, with an optional identity residual."""

    def __init__(self, ch: int, k: int, bias: bool, residual: bool) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(8, ch), nn.GroupNorm(8, ch)
        self.conv1, self.conv2 = conv(ch, ch, k, bias, reflect=True), conv(ch, ch, k, bias, reflect=True)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return x + y if self.residual else y


def gn_encoder(cin: int, ch: int, k: int, k_res: int = 1, bias: bool = False, residual: bool = True,
               layers: int = 2) -> nn.Sequential:
    """A first conv (reflect padding) to ``ch`` channels, then ``layers`` GN blocks."""
    return nn.Sequential(conv(cin, ch, k, bias, reflect=True),
                         *[GNBlock(ch, k_res, bias, residual) for _ in range(layers)])


def gn_encoder_params(cin: int, ch: int, k: int, k_res: int = 1, bias: bool = False, layers: int = 2) -> int:
    block = 2 * (ch * ch * k_res ** 2 + (ch if bias else 0)) + 4 * ch
    return cin * ch * k * k + (ch if bias else 0) + layers * block


def gn_encoder_macs(pixels: int, cin: int, ch: int, k: int, k_res: int = 1, layers: int = 2) -> int:
    return pixels * (cin * ch * k * k + layers * 2 * ch * ch * k_res ** 2)


def rotate_half(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def linspace_coords(h: int, w: int, like: Tensor) -> Tensor:
    """(h·w, 2) row/column coordinates on [0, 1] (both ends included), row-major."""
    r = torch.linspace(0, 1, h, dtype=like.dtype, device=like.device)
    c = torch.linspace(0, 1, w, dtype=like.dtype, device=like.device)
    return torch.stack(torch.meshgrid(r, c, indexing="ij"), -1).reshape(-1, 2)


def rope_freqs(dim: int, theta: float = 100.0) -> Tensor:
    """Learned-RoPE initial frequencies (2, dim): rows to the first half of channels, columns to the second."""
    f = theta ** torch.linspace(0, -1, dim // 4)
    f = torch.cat([f, f])
    out = torch.zeros(2, dim)
    out[0, : dim // 2] = f
    out[1, -(dim // 2):] = f
    return out * 2 * math.pi


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """x (B, D, h, w) rotated by angle = coords @ freqs per pixel (learned 2-D RoPE)."""
    B, D, h, w = x.shape
    angle = (linspace_coords(h, w, x) @ freqs.to(x.dtype)).T.reshape(1, D, h, w)
    a, b = x.chunk(2, dim=1)
    return x * angle.cos() + torch.cat((-b, a), dim=1) * angle.sin()


# -- lean attention --------------------------------------------------------------------------------------------
def chunk_rows(n_rows: int, row_elems: int, out_elems: int) -> int:
    """Rows per chunk so that a chunk's ``row_elems``-element rows stay within the attention budget."""
    budget = max(CHUNK_ELEMENTS, out_elems // 16)
    return max(1, min(n_rows, budget // max(1, row_elems)))


def maybe_checkpoint(fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """Run ``fn`` so that backward recomputes it instead of keeping its weights (only when grads flow)."""
    if torch.is_grad_enabled() and any(a.requires_grad for a in args):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def head_mean_attention(q: Tensor, k: Tensor, v: Tensor, scale: float,
                        allowed: Callable[[int, int], tuple[Tensor | None, slice]] | None = None,
                        q_rows: int | None = None) -> Tensor:
    """Σ_j mean_h softmax_j(scale·q_h·k_h)[i, j] · v_j, chunked over queries.

    q (B, n, L, d), k (B, n, S, d), v (B, S, C) → (B, L, C). ``allowed(start, stop)`` gives, for queries
    [start, stop), a boolean mask over the keys it keeps (or None for all) and the slice of keys it keeps;
    queries come in whole rows of ``q_rows`` queries so windows can be cut per row band.
    """
    B, n, L, _ = q.shape
    C = v.shape[-1]
    row = q_rows or 1
    rows = chunk_rows(L // row, row * n * k.shape[2], L * C)
    out = q.new_empty(B, L, C)
    for r0 in range(0, L // row, rows):
        a, b = r0 * row, min(L, (r0 + rows) * row)
        mask, keys = allowed(a, b) if allowed is not None else (None, slice(None))

        def part(qc: Tensor, kc: Tensor, vc: Tensor, mask: Tensor | None = mask) -> Tensor:
            logits = (qc * scale) @ kc.transpose(-1, -2)
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            return logits.softmax(-1).mean(1) @ vc

        # Written into one preallocated output: no list of chunks and no concatenated copy.
        out[:, a:b] = maybe_checkpoint(part, q[:, :, a:b], k[:, :, keys], v[:, keys])
    return out
