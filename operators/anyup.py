"""AnyUp (Wimmer et al., 2025): JAFAR-style attention made independent of the feature width, in a window.

Module (official defaults: qk_dim 128, 4 heads, window_ratio 0.1, unification kernel 5):
- image encoder (Conv1×1 3→128 + 2 residual GN/SiLU blocks) with the learned 2-D RoPE; query encoder → adaptive
  average pool to the output size → Conv3×3 (no bias) → RMSNorm;
- key: key encoder → pool to low res, concatenated with the feature-unification branch, then an aggregation
  encoder (Conv3×3 256→128, reflect, + 2 blocks) → RMSNorm;
- feature unification: every feature channel is convolved (zero padding, divided by the number of in-map
  taps) with each of 128 learned 5×5 basis filters; the (128·C) responses are viewed as (128, C) in the order
  the official code uses (channel-major response index reinterpreted as basis-major), softmax over the
  first axis, mean over the second, then 2 blocks — no parameter depends on C;
- attention: nn.MultiheadAttention(128, 4 heads) weights, averaged over heads, masked to a window: query
  (i, j) at centre ((i+½)/H, (j+½)/W) sees low-res rows ⌊(y−r)·h⌋ … ⌈(y+r)·h⌉−1 (clamped to [0, 1]) and the
  same for columns, r = window_ratio; output = weights · raw x (a convex combination).
Impls: ``official`` runs nn.MultiheadAttention over every key with a boolean mask (the full (L, h·w) weights
are materialised); ``lean`` cuts the keys to the row band of each chunk of output rows (a view, no gather)
and masks only within it. The kernel impls (``cupy``, ``cpu-kernel`` and their ``-fused`` forms) run the
attention on the window_attn family's band windows (docs/kernels.md): each output row and column brings its own
low-res range from ``windows`` (not a parent + offset window), keys outside it are masked (excluded from the
softmax, as the official boolean mask does; no zero-logit slots); the heads are groups of the logits and their
softmax weights are averaged before one aggregation of the raw x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from upbench.cases import Case
from upbench.plugin import HyperParam, Impl

from . import window_attn_kernels as wk
from .jafar import mha_qk, reference_head_mean, split_heads, tokens_to_map
from .vfm_common import (
    PATCH,
    GNBlock,
    VfmOperator,
    apply_rope,
    conv,
    gn_encoder,
    gn_encoder_macs,
    gn_encoder_params,
    head_mean_attention,
    rope_freqs,
)


def windows(out_len: int, low_len: int, ratio: float) -> tuple[Tensor, Tensor]:
    """Per output row (or column): first and one-past-last low-res index of its window (float32 as shipped)."""
    pos = (torch.arange(out_len, dtype=torch.float32) + 0.5) / out_len
    lo = ((pos - ratio).clamp(0.0, 1.0) * low_len).floor().long()
    hi = ((pos + ratio).clamp(0.0, 1.0) * low_len).ceil().long()
    return lo, hi


def window_mask(out_hw: tuple[int, int], low_hw: tuple[int, int], ratio: float) -> Tensor:
    """(L, S) boolean, True where the key is outside the query's window (the official mask's convention)."""
    (r0, r1), (c0, c1) = windows(out_hw[0], low_hw[0], ratio), windows(out_hw[1], low_hw[1], ratio)
    rows, cols = torch.arange(low_hw[0]), torch.arange(low_hw[1])
    row_ok = (rows >= r0[:, None]) & (rows < r1[:, None])
    col_ok = (cols >= c0[:, None]) & (cols < c1[:, None])
    return ~(row_ok[:, None, :, None] & col_ok[None, :, None, :]).reshape(out_hw[0] * out_hw[1], -1)


class FeatureUnification(nn.Module):
    def __init__(self, out_ch: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.basis = nn.Parameter(torch.randn(out_ch, 1, k, k))

    def forward(self, x: Tensor) -> Tensor:
        B, C, h, w = x.shape
        n, p = self.basis.shape[0], self.k // 2
        r = F.conv2d(x, self.basis.repeat(C, 1, 1, 1), padding=p, groups=C)
        taps = F.conv2d(torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device),
                        torch.ones(1, 1, self.k, self.k, dtype=x.dtype, device=x.device), padding=p)
        return (r / taps).view(B, n, C, h, w).softmax(1).mean(2)


class AnyUpModule(nn.Module):
    def __init__(self, qk: int = 128, heads: int = 4, k_lfu: int = 5, ratio: float = 0.1) -> None:
        super().__init__()
        self.heads, self.ratio = heads, ratio
        self.image_encoder = gn_encoder(3, qk, 1)
        self.query_encoder = gn_encoder(qk, qk, 1)
        self.key_encoder = gn_encoder(qk, qk, 1)
        self.unification = FeatureUnification(qk, k_lfu)
        self.unification_blocks = nn.Sequential(GNBlock(qk, 1, False, True), GNBlock(qk, 1, False, True))
        self.aggregation = gn_encoder(2 * qk, qk, 3)
        self.q_conv = conv(qk, qk, 3, bias=False)
        self.norm_q, self.norm_k = nn.RMSNorm(qk), nn.RMSNorm(qk)
        self.attention = nn.MultiheadAttention(qk, heads, batch_first=True)
        self.rope = nn.Parameter(rope_freqs(qk))

    def queries_keys(self, x: Tensor, image: Tensor, out_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        enc = apply_rope(self.image_encoder(image), self.rope)
        q = self.q_conv(F.adaptive_avg_pool2d(self.query_encoder(enc), out_hw)).flatten(2).transpose(1, 2)
        k = F.adaptive_avg_pool2d(self.key_encoder(enc), x.shape[-2:])
        u = self.unification_blocks(self.unification(F.normalize(x, dim=1)))
        k = self.aggregation(torch.cat([k, u], 1)).flatten(2).transpose(1, 2)
        return self.norm_q(q), self.norm_k(k)


def _official(case: Case, m: AnyUpModule):
    mask = window_mask(case.out_hw, (case.H, case.w), m.ratio).to(case.device) if m.ratio > 0 else None

    def run(x: Tensor, image: Tensor) -> Tensor:
        q, k = m.queries_keys(x, image, case.out_hw)
        _, w = m.attention(q, k, k, need_weights=True, average_attn_weights=True, attn_mask=mask)
        return tokens_to_map(w @ x.flatten(2).transpose(1, 2), case.out_hw)
    return run


def _lean(case: Case, m: AnyUpModule):
    oh, ow = case.out_hw
    h, w = case.H, case.w
    (r0, r1), (c0, c1) = windows(oh, h, m.ratio), windows(ow, w, m.ratio)
    cols = torch.arange(w)
    col_ok = ((cols >= c0[:, None]) & (cols < c1[:, None])).to(case.device)  # (ow, w)

    def allowed(a: int, b: int) -> tuple[Tensor | None, slice]:
        i0, i1 = a // ow, b // ow
        lo, hi = int(r0[i0:i1].min()), int(r1[i0:i1].max())
        rows = torch.arange(lo, hi)
        row_ok = ((rows >= r0[i0:i1, None]) & (rows < r1[i0:i1, None])).to(case.device)
        mask = (row_ok[:, None, :, None] & col_ok[None, :, None, :]).reshape((i1 - i0) * ow, -1)
        return mask, slice(lo * w, hi * w)  # the band's keys are contiguous rows: a view

    def run(x: Tensor, image: Tensor) -> Tensor:
        q, k = m.queries_keys(x, image, case.out_hw)
        wq, bq, wk, bk = mha_qk(m.attention)
        qh, kh = split_heads(F.linear(q, wq, bq), m.heads), split_heads(F.linear(k, wk, bk), m.heads)
        out = head_mean_attention(qh, kh, x.flatten(2).transpose(1, 2), qh.shape[-1] ** -0.5,
                                  allowed if m.ratio > 0 else None, q_rows=ow)
        return tokens_to_map(out, case.out_hw)
    return run


def band(case: Case, ratio: float) -> wk.Band:
    """AnyUp's window as a window_attn band: each output row's and column's low-res range (all of the map
    when ratio ≤ 0, where the official code uses no mask)."""
    (oh, ow), h, w = case.out_hw, case.H, case.w
    if ratio > 0:
        (r0, r1), (c0, c1) = windows(oh, h, ratio), windows(ow, w, ratio)
    else:
        r0, r1, c0, c1 = torch.zeros(oh), torch.full((oh,), h), torch.zeros(ow), torch.full((ow,), w)
    return wk.Band.from_ranges(r0, r1, c0, c1, h, w, case.s)


def _kernel_run(case: Case, m: AnyUpModule, fused: bool):
    """The attention on the window_attn band kernels: projected q (B, oh, ow, qk) and k (B, h, w, qk) are
    channels-last as they come (tokens are row-major), the heads are the G groups, scale 1/√(qk/heads)."""
    bd = band(case, m.ratio)
    wk.FAMILY.prepare("cuda" if case.device.startswith("cuda") else "cpu", wk.BAND_KERNELS, case.torch_dtype)

    def run(x: Tensor, image: Tensor) -> Tensor:
        q, k = m.queries_keys(x, image, case.out_hw)
        wq, bq, wkey, bk = mha_qk(m.attention)
        B, (oh, ow) = x.shape[0], case.out_hw
        qp, kp = F.linear(q, wq, bq).view(B, oh, ow, -1), F.linear(k, wkey, bk).view(B, case.H, case.w, -1)
        scale = (qp.shape[-1] // m.heads) ** -0.5
        return wk.nchw(wk.band_attention_mean(qp, kp, wk.channels_last(x), bd, m.heads, scale, fused=fused))
    return run


def _kernel_supports(case: Case) -> str | None:
    try:
        bd = band(case, float(ANYUP.hp(case)["window_ratio"]))
    except ValueError as e:
        return str(e)
    if bd.M > wk.MAX_SLOTS:
        return (f"the window_attn kernels hold at most {wk.MAX_SLOTS} slots; the band's union grid is "
                f"{bd.Ku}×{bd.Kv} (lower window_ratio or the low-res size)")
    return None


class AnyUp(VfmOperator):
    name = "anyup"
    description = ("AnyUp: JAFAR-style encoders with a channel-count-independent feature unification; "
                   "head-averaged attention weights × raw features within a window (window_ratio)")
    properties = ("convex", "exact_on_constant")  # head-averaged softmax weights × raw features in a window
    hyperparams = (PATCH, HyperParam("qk_dim", 128, "query/key width"),
                   HyperParam("heads", 4, "attention heads"),
                   HyperParam("k_lfu", 5, "basis filter size of the feature unification"),
                   HyperParam("window_ratio", 0.1, "attention window half-size as a fraction of the image"))
    impls = (
        Impl("official", _official, "as the official code: nn.MultiheadAttention over all keys with a "
             "boolean window mask, per-head and averaged weights (B, L, h·w) materialised"),
        Impl("lean", _lean, "keys cut to each chunk's row band (a view), mask within it, softmax chunked "
             "over output rows; checkpointed chunks in backward"),
        *wk.kernel_impls(_kernel_run, "band window per output row and column (keys outside masked), per-head "
                         "softmax averaged over heads, one aggregation of the raw x", _kernel_supports),
    )
    model_impls = ("lean", "official")

    def _dims(self, case: Case) -> tuple[int, int, int, float]:
        p = self.hp(case)
        return int(p["qk_dim"]), int(p["heads"]), int(p["k_lfu"]), float(p["window_ratio"])

    def check(self, case: Case) -> str | None:
        why = super().check(case)
        if why:
            return why
        qk, heads, k_lfu, ratio = self._dims(case)
        if qk % 8 or qk % heads:
            return f"anyup needs qk_dim divisible by 8 and by heads (got qk_dim={qk}, heads={heads})"
        if k_lfu < 1 or k_lfu % 2 == 0:
            return f"anyup needs an odd k_lfu (got {k_lfu})"
        if not 0 <= ratio <= 1:
            return f"anyup needs 0 ≤ window_ratio ≤ 1 (got {ratio})"
        return None

    def module(self, case: Case) -> nn.Module:
        qk, heads, k_lfu, ratio = self._dims(case)
        return AnyUpModule(qk, heads, k_lfu, ratio)

    def reference(self, case: Case, inputs: dict[str, Tensor], module: nn.Module | None) -> Tensor:
        assert isinstance(module, AnyUpModule)
        x = inputs["x"]
        q, k = module.queries_keys(x, inputs["image"], case.out_hw)
        wq, bq, wk, bk = mha_qk(module.attention)
        mask = window_mask(case.out_hw, (case.H, case.w), module.ratio) if module.ratio > 0 else None
        out = reference_head_mean(q @ wq.T + bq, k @ wk.T + bk, x.flatten(2).transpose(1, 2), module.heads, mask)
        return tokens_to_map(out, case.out_hw)

    def window_keys(self, case: Case) -> int:
        """Keys summed over all queries of one image: (Σ rows in window) × (Σ columns in window)."""
        ratio = self._dims(case)[3]
        if ratio <= 0:
            return case.out_hw[0] * case.out_hw[1] * case.H * case.w
        (r0, r1), (c0, c1) = windows(case.out_hw[0], case.H, ratio), windows(case.out_hw[1], case.w, ratio)
        return int((r1 - r0).sum()) * int((c1 - c0).sum())

    def params_formula(self, case: Case) -> int:
        qk, _, k_lfu, _ = self._dims(case)
        block = 2 * qk * qk + 4 * qk
        return (gn_encoder_params(3, qk, 1) + 2 * gn_encoder_params(qk, qk, 1) + qk * k_lfu ** 2 + 2 * block
                + gn_encoder_params(2 * qk, qk, 3) + 9 * qk * qk + 2 * qk + 4 * qk * qk + 4 * qk + 2 * qk)

    def mac_terms(self, case: Case) -> dict[str, int]:
        qk, _, k_lfu, _ = self._dims(case)
        ih, iw = self.image_hw(case)
        P, S = case.B * ih * iw, case.B * case.H * case.w
        L = case.B * case.out_hw[0] * case.out_hw[1]
        win = case.B * self.window_keys(case)
        return {
            "image_encoder": gn_encoder_macs(P, 3, qk, 1),
            "rope": 2 * P * qk,
            "query_encoder": gn_encoder_macs(P, qk, qk, 1),
            "key_encoder": gn_encoder_macs(P, qk, qk, 1),
            "unification": S * case.C * qk * k_lfu ** 2 + S * 2 * 2 * qk * qk,
            "aggregation": gn_encoder_macs(S, 2 * qk, qk, 3),
            "query_conv": L * 9 * qk * qk,
            "q_proj": L * qk * qk,
            "k_proj": S * qk * qk,
            "qk": win * qk,
            "av": win * case.C,
        }


ANYUP = AnyUp()
