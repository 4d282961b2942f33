"""NAF (valeo.ai, 2025): neighbourhood attention with image-only keys and the raw features as values.

Module (official defaults: dim 256, 4 attention heads, 4 RoPE heads, kernel 9, 2 encoder layers):
- the image is first bilinearly shrunk (align_corners False) when it exceeds 4× the output size: to
  (min(H_img, 4·oh, 4·ow), min(W_img, 4·ow, 4·oh));
- two encoders on it, concatenated to 256 channels: Conv1×1 3→128 + 2 blocks of Conv1×1, and Conv3×3 3→128 +
  2 blocks of Conv3×3 (every conv with bias, reflect padding; blocks are GroupNorm 8 → SiLU → conv, twice, with
  no residual) → adaptive average pool to the output size → RoPE per head (head dim 64, periods
  100^(2i/32), coordinates at pixel centres on [−1, 1]);
- queries = that map; keys = its adaptive average pool to the low-res size (no feature content in them);
  values = x split into 4 channel blocks, one per head;
- attention: the keys and values are nearest-upsampled to the output grid and attended with dilated
  neighbourhood attention (kernel 9, dilation s, scale 64^−½). On that grid each dilation subgrid is the low-res
  map itself, so query (i, j) sees the 9×9 low-res block around its parent (⌊i/s⌋, ⌊j/s⌋), shifted inwards at
  the borders (needs h, w ≥ 9). Each head's output is a convex combination of its value block.
The official code calls NATTEN; it is not a dependency here. ``official`` is the masked full attention users
fall back to without it (all L × h·w weights materialised); ``lean`` gathers the 81 window keys and values at
low resolution (small) and attends chunk by chunk of output rows, broadcasting over each parent's s×s children.
The kernel impls (``cupy``, ``cpu-kernel`` and their ``-fused`` forms) run the attention on the window_attn
kernel family (docs/kernels.md) with the ``shift`` border rule, the heads as groups.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from upbench.cases import Case
from upbench.plugin import HyperParam, Impl

from . import window_attn_kernels as wk
from .vfm_common import (
    PATCH,
    VfmOperator,
    chunk_rows,
    gn_encoder,
    gn_encoder_macs,
    gn_encoder_params,
    maybe_checkpoint,
)


def window_start(n: int, s: int, k: int) -> Tensor:
    """First low-res index of the k-wide window of each of the n·s output positions (clamped inside)."""
    return (torch.arange(n * s) // s - k // 2).clamp(0, n - k)


class NafModule(nn.Module):
    def __init__(self, dim: int = 256, heads: int = 4, rope_heads: int = 4, kernel: int = 9) -> None:
        super().__init__()
        self.heads, self.kernel, self.rope_heads = heads, kernel, rope_heads
        half = dim // 2
        self.encoder = gn_encoder(3, half, 1, 1, bias=True, residual=False)
        self.sem_encoder = gn_encoder(3, half, 3, 3, bias=True, residual=False)
        dh = dim // rope_heads
        self.register_buffer("periods", 100.0 ** (2 * torch.arange(dh // 4) / (dh // 2)))

    def rope(self, x: Tensor) -> Tensor:
        B, D, h, w = x.shape
        n = self.rope_heads
        ch = (torch.arange(0.5, h, dtype=x.dtype, device=x.device) / h) * 2 - 1
        cw = (torch.arange(0.5, w, dtype=x.dtype, device=x.device) / w) * 2 - 1
        coords = torch.stack(torch.meshgrid(ch, cw, indexing="ij"), -1).reshape(-1, 2)
        ang = (2 * math.pi * coords[:, :, None] / self.periods.to(x.dtype)).flatten(1).tile(2).T  # (dh, hw)
        # Channels-first per head, so no transposed copies; one product plus one in-place multiply-add.
        t = x.reshape(B, n, D // n, h * w)
        a, b = t.chunk(2, dim=2)
        out = t * ang.cos()
        out.addcmul_(torch.cat((-b, a), dim=2), ang.sin())
        return out.view(B, D, h, w)

    def queries_keys(self, x: Tensor, image: Tensor, out_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Query map (B, 256, oh, ow) and key map (B, 256, h, w)."""
        oh, ow = out_hw
        ih, iw = image.shape[-2:]
        if ih > 4 * oh or iw > 4 * ow:
            size = (min(ih, 4 * oh, 4 * ow), min(iw, 4 * ow, 4 * oh))
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        enc = torch.cat([self.encoder(image), self.sem_encoder(image)], 1)
        q = self.rope(F.adaptive_avg_pool2d(enc, out_hw))
        return q, F.adaptive_avg_pool2d(q, x.shape[-2:])


def naf_mask(case: Case, kernel: int) -> Tensor:
    """(L, h·w) boolean, True outside the query's clamped kernel×kernel low-res window."""
    oh, ow = case.out_hw
    rs, cs = window_start(case.H, case.s, kernel), window_start(case.w, case.s, kernel)
    rows, cols = torch.arange(case.H), torch.arange(case.w)
    rok = (rows >= rs[:, None]) & (rows < rs[:, None] + kernel)
    cok = (cols >= cs[:, None]) & (cols < cs[:, None] + kernel)
    return ~(rok[:, None, :, None] & cok[None, :, None, :]).reshape(oh * ow, -1)


def _heads(t: Tensor, n: int) -> Tensor:
    """(B, n·d, h, w) → (B, n, h·w, d)."""
    B, D, h, w = t.shape
    return t.reshape(B, n, D // n, h * w).transpose(2, 3)


def _masked_full(case: Case, m: NafModule, q: Tensor, k: Tensor, x: Tensor, mask: Tensor) -> Tensor:
    n = m.heads
    qh, kh, vh = _heads(q, n), _heads(k, n), _heads(x, n)
    logits = (qh @ kh.transpose(-1, -2)) * qh.shape[-1] ** -0.5
    out = logits.masked_fill(mask, float("-inf")).softmax(-1) @ vh  # (B, n, L, C/n)
    return out.transpose(2, 3).reshape(x.shape[0], x.shape[1], *case.out_hw)


def _official(case: Case, m: NafModule):
    mask = naf_mask(case, m.kernel).to(case.device)

    def run(x: Tensor, image: Tensor) -> Tensor:
        q, k = m.queries_keys(x, image, case.out_hw)
        return _masked_full(case, m, q, k, x, mask)
    return run


def _lean(case: Case, m: NafModule):
    s, K, n = case.s, m.kernel, m.heads
    h, w = case.H, case.w
    # Window rows/columns per low-res parent (every child of a parent shares its window): low-res indices only.
    ri = (window_start(h, 1, K)[:, None] + torch.arange(K)).to(case.device)  # (h, K)
    ci = (window_start(w, 1, K)[:, None] + torch.arange(K)).to(case.device)  # (w, K)

    def windowed(t: Tensor) -> Tensor:
        """(B, D, h, w) → (B, n, h, w, K², D/n): each parent's K×K window, gathered at low resolution."""
        B, D = t.shape[:2]
        g = t[:, :, ri][:, :, :, :, ci]  # (B, D, h, K, w, K)
        return g.view(B, n, D // n, h, K, w, K).permute(0, 1, 3, 5, 4, 6, 2).reshape(B, n, h, w, K * K, D // n)

    def run(x: Tensor, image: Tensor) -> Tensor:
        q, k = m.queries_keys(x, image, case.out_hw)
        B, D = q.shape[:2]
        C = x.shape[1]
        kw, vw = windowed(k), windowed(x)
        qv = q.view(B, n, D // n, h, s, w, s)
        out = x.new_empty(B, C, h * s, w * s)
        ov = out.view(B, n, C // n, h, s, w, s)
        rows = chunk_rows(h, n * w * s * s * K * K, B * C * h * s * w * s)
        scale = (D // n) ** -0.5

        def part(qc: Tensor, kc: Tensor, vc: Tensor) -> Tensor:
            hc = qc.shape[3]
            qc = qc.permute(0, 1, 3, 5, 4, 6, 2).reshape(B, n, hc, w, s * s, D // n)
            a = ((qc * scale) @ kc.transpose(-1, -2)).softmax(-1)  # (B, n, hc, w, s², K²)
            return (a @ vc).view(B, n, hc, w, s, s, C // n).permute(0, 1, 6, 2, 4, 3, 5)

        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            ov[:, :, :, r0:r1] = maybe_checkpoint(part, qv[:, :, :, r0:r1], kw[:, :, r0:r1], vw[:, :, r0:r1])
        return out
    return run


def _kernel_run(case: Case, m: NafModule, fused: bool):
    """NAF's attention on the window_attn kernels: RoPE'd q, k from the module, then per head (group) a K×K
    low-res window around the parent with the ``shift`` border rule (the window moved inwards, as above),
    computed logits q·k / √d."""
    win = wk.Window.square(m.kernel, 1, "shift")
    cl = wk.channels_last

    def run(x: Tensor, image: Tensor) -> Tensor:
        q, k = m.queries_keys(x, image, case.out_hw)
        scale = (q.shape[1] // m.heads) ** -0.5
        return wk.nchw(wk.attention(cl(q), cl(k), cl(x), win, case.s, m.heads, scale, fused=fused))
    return run


def _kernel_supports(case: Case) -> str | None:
    kernel = int(NAF.hp(case)["kernel"])
    if kernel * kernel > wk.MAX_SLOTS:
        return f"the window_attn kernels hold at most {wk.MAX_SLOTS} slots (kernel={kernel})"
    return None


class Naf(VfmOperator):
    name = "naf"
    description = ("NAF: image-only encoder with RoPE; dilated neighbourhood attention (kernel 9, dilation s) "
                   "from output-size queries to pooled keys; values = raw features split over heads")
    properties = ("convex", "exact_on_constant")  # per-head softmax over the raw features' channel blocks
    hyperparams = (PATCH, HyperParam("dim", 256, "encoder / query-key width"),
                   HyperParam("heads", 4, "attention heads (C must divide)"),
                   HyperParam("kernel", 9, "neighbourhood size (odd; h, w ≥ kernel)"))
    impls = (
        Impl("official", _official, "masked full attention over all low-res keys (what runs without NATTEN, "
             "which the official code calls): (B, heads, L, h·w) weights materialised"),
        Impl("lean", _lean, "the K² window keys/values gathered at low res, softmax per chunk of output rows, "
             "broadcast over each parent's s×s children; checkpointed chunks in backward"),
        *wk.kernel_impls(_kernel_run, "K×K window, shift border rule, q·k/√d per head",
                         lambda case: _kernel_supports(case)),
    )
    model_impls = ("lean", "official")

    def _dims(self, case: Case) -> tuple[int, int, int]:
        p = self.hp(case)
        return int(p["dim"]), int(p["heads"]), int(p["kernel"])

    def check(self, case: Case) -> str | None:
        why = super().check(case)
        if why:
            return why
        dim, heads, kernel = self._dims(case)
        if kernel < 1 or kernel % 2 == 0:
            return f"naf needs an odd kernel (got kernel={kernel})"
        if min(case.H, case.w) < kernel:
            return (f"naf's neighbourhood attention needs a low-res map of at least kernel×kernel = "
                    f"{kernel}×{kernel} (got {case.H}×{case.w}); lower kernel or raise H, W")
        if case.C % heads or dim % (4 * heads) or (dim // 2) % 8:
            return (f"naf needs C divisible by heads and dim by 4·heads and 16 (got C={case.C}, dim={dim}, "
                    f"heads={heads})")
        return None

    def module(self, case: Case) -> nn.Module:
        dim, heads, kernel = self._dims(case)
        return NafModule(dim, heads, heads, kernel)

    def reference(self, case: Case, inputs: dict[str, Tensor], module: nn.Module | None) -> Tensor:
        """The window taken literally: for every output pixel, its K×K block of low-res keys and values."""
        assert isinstance(module, NafModule)
        x = inputs["x"]
        q, k = module.queries_keys(x, inputs["image"], case.out_hw)
        K, n = module.kernel, module.heads
        rs, cs = window_start(case.H, case.s, K), window_start(case.w, case.s, K)
        ri = rs[:, None] + torch.arange(K)  # (oh, K)
        ci = cs[:, None] + torch.arange(K)  # (ow, K)
        kg = k[:, :, ri[:, None, :, None], ci[None, :, None, :]]  # (B, D, oh, ow, K, K)
        vg = x[:, :, ri[:, None, :, None], ci[None, :, None, :]]
        B, D, oh, ow = q.shape
        kg = kg.reshape(B, n, D // n, oh, ow, K * K)
        vg = vg.reshape(B, n, x.shape[1] // n, oh, ow, K * K)
        a = (torch.einsum("bndij,bndijm->bnijm", q.view(B, n, D // n, oh, ow), kg) / (D // n) ** 0.5).softmax(-1)
        return torch.einsum("bnijm,bncijm->bncij", a, vg).reshape(B, x.shape[1], oh, ow)

    def params_formula(self, case: Case) -> int:
        half = self._dims(case)[0] // 2
        return gn_encoder_params(3, half, 1, 1, bias=True) + gn_encoder_params(3, half, 3, 3, bias=True)

    def encoder_hw(self, case: Case) -> tuple[int, int]:
        (ih, iw), (oh, ow) = self.image_hw(case), case.out_hw
        if ih > 4 * oh or iw > 4 * ow:
            return min(ih, 4 * oh, 4 * ow), min(iw, 4 * ow, 4 * oh)
        return ih, iw

    def mac_terms(self, case: Case) -> dict[str, int]:
        dim, _, K = self._dims(case)
        eh, ew = self.encoder_hw(case)
        P = case.B * eh * ew
        L = case.B * case.out_hw[0] * case.out_hw[1]
        resized = (eh, ew) != self.image_hw(case)
        return {
            "resize": 4 * 3 * P if resized else 0,
            "encoder": gn_encoder_macs(P, 3, dim // 2, 1, 1),
            "sem_encoder": gn_encoder_macs(P, 3, dim // 2, 3, 3),
            "rope": 2 * L * dim,
            "qk": L * K * K * dim,
            "av": L * K * K * case.C,
        }


NAF = Naf()
