"""JAFAR (Couairon et al., 2025): global cross-attention whose weights re-assemble the raw low-res features.

Module (official defaults: qk_dim 128, 4 heads, image-encoder kernel 1):
- image encoder on the guidance image: Conv k×k (3→128, no bias, reflect) + 2 residual blocks
  (GroupNorm 8 → SiLU → Conv1×1, twice); a learned 2-D RoPE (freqs (2, 128), coordinates on [0, 1]) on it;
- queries: query encoder (Conv1×1 + 2 blocks) → adaptive average pool to the output size → GroupNorm (no affine)
  → Conv3×3 (no bias) → RMSNorm;
- keys: key encoder → adaptive average pool to the low-res size, modulated (SFT) by the features:
  k = Conv1×1_γ(f)·GN(k) + Conv1×1_β(f), f = feature encoder (Conv1×1 C→128 + 2 blocks) of L2-normalised x
  → RMSNorm;
- nn.MultiheadAttention(128, 4 heads, vdim=C) supplies only its head-averaged weights A (its value and output
  projections run in the official code but their result is discarded); output = A · x (raw features).
So the output is a convex combination of the low-res features. Impls: ``official`` materialises the per-head
and averaged weights through nn.MultiheadAttention; ``lean`` projects q and k itself and chunks over queries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from upbench.cases import Case
from upbench.plugin import HyperParam, Impl

from .vfm_common import (
    PATCH,
    VfmOperator,
    apply_rope,
    conv,
    gn_encoder,
    gn_encoder_macs,
    gn_encoder_params,
    head_mean_attention,
    rope_freqs,
)


def mha_qk(mha: nn.MultiheadAttention) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Query and key projection weights and biases of a torch MultiheadAttention."""
    E = mha.embed_dim
    wq, wk = ((mha.q_proj_weight, mha.k_proj_weight) if mha.in_proj_weight is None
              else (mha.in_proj_weight[:E], mha.in_proj_weight[E:2 * E]))
    return wq, mha.in_proj_bias[:E], wk, mha.in_proj_bias[E:2 * E]


def split_heads(t: Tensor, n: int) -> Tensor:
    """(B, L, n·d) → (B, n, L, d)."""
    B, L, D = t.shape
    return t.view(B, L, n, D // n).transpose(1, 2)


def reference_head_mean(q: Tensor, k: Tensor, v: Tensor, n: int, mask: Tensor | None = None) -> Tensor:
    """The definition: per-head softmax(q·k/√d) (masked keys excluded), averaged over heads, times v."""
    qh, kh = split_heads(q, n), split_heads(k, n)
    logits = torch.einsum("bnld,bnsd->bnls", qh, kh) / qh.shape[-1] ** 0.5
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    return torch.einsum("bls,bsc->blc", logits.softmax(-1).mean(1), v)


def tokens_to_map(t: Tensor, hw: tuple[int, int]) -> Tensor:
    """(B, L, C) → (B, C, h, w) as a view."""
    return t.transpose(1, 2).unflatten(2, hw)


class JafarModule(nn.Module):
    def __init__(self, C: int, qk: int = 128, heads: int = 4, k_img: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.image_encoder = gn_encoder(3, qk, k_img)
        self.query_encoder = gn_encoder(qk, qk, 1)
        self.key_encoder = gn_encoder(qk, qk, 1)
        self.feature_encoder = gn_encoder(C, qk, 1)
        self.sft_gamma = conv(qk, qk, 1, bias=False)
        self.sft_beta = conv(qk, qk, 1, bias=False)
        self.q_conv = conv(qk, qk, 3, bias=False)
        self.norm_q, self.norm_k, self.norm_v = nn.RMSNorm(qk), nn.RMSNorm(qk), nn.RMSNorm(C)
        self.attention = nn.MultiheadAttention(qk, heads, vdim=C, batch_first=True)
        self.rope = nn.Parameter(rope_freqs(qk))

    def queries_keys(self, x: Tensor, image: Tensor, out_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """RMS-normalised query tokens (B, L, 128) and key tokens (B, S, 128), before the projections."""
        enc = apply_rope(self.image_encoder(image), self.rope)
        q = F.group_norm(F.adaptive_avg_pool2d(self.query_encoder(enc), out_hw), 8)
        q = self.q_conv(q).flatten(2).transpose(1, 2)
        k = F.adaptive_avg_pool2d(self.key_encoder(enc), x.shape[-2:])
        f = self.feature_encoder(F.normalize(x, dim=1))
        k = (self.sft_gamma(f) * F.group_norm(k, 8) + self.sft_beta(f)).flatten(2).transpose(1, 2)
        return self.norm_q(q), self.norm_k(k)


def _official(case: Case, m: JafarModule):
    def run(x: Tensor, image: Tensor) -> Tensor:
        q, k = m.queries_keys(x, image, case.out_hw)
        v = x.flatten(2).transpose(1, 2)
        _, w = m.attention(q, k, m.norm_v(v), need_weights=True, average_attn_weights=True)
        return tokens_to_map(w @ v, case.out_hw)
    return run


def _lean(case: Case, m: JafarModule):
    def run(x: Tensor, image: Tensor) -> Tensor:
        q, k = m.queries_keys(x, image, case.out_hw)
        wq, bq, wk, bk = mha_qk(m.attention)
        qh, kh = split_heads(F.linear(q, wq, bq), m.heads), split_heads(F.linear(k, wk, bk), m.heads)
        out = head_mean_attention(qh, kh, x.flatten(2).transpose(1, 2), qh.shape[-1] ** -0.5)
        return tokens_to_map(out, case.out_hw)
    return run


class Jafar(VfmOperator):
    name = "jafar"
    description = ("JAFAR: image encoder + RoPE; queries pooled to the output, keys pooled to low res and "
                   "SFT-modulated by the features; head-averaged attention weights × raw features (global)")
    hyperparams = (PATCH, HyperParam("qk_dim", 128, "query/key width"),
                   HyperParam("heads", 4, "attention heads"),
                   HyperParam("k_img", 1, "kernel size of the image encoder's first conv", (1, 3)))
    impls = (
        Impl("official", _official, "as the official code: nn.MultiheadAttention returns the per-head and "
             "averaged weights (B, L, h·w) — materialised — and also runs its unused value/output projections"),
        Impl("lean", _lean, "own q/k projections, softmax chunked over queries (bounded weights), "
             "checkpointed chunks in backward"),
    )
    model_impls = ("lean", "official")

    def _dims(self, case: Case) -> tuple[int, int, int]:
        p = self.hp(case)
        return int(p["qk_dim"]), int(p["heads"]), int(p["k_img"])

    def check(self, case: Case) -> str | None:
        why = super().check(case)
        if why:
            return why
        qk, heads, _ = self._dims(case)
        if qk % 8 or qk % heads or qk % 4:
            return f"jafar needs qk_dim divisible by 8 (GroupNorm) and by heads (got qk_dim={qk}, heads={heads})"
        return None

    def module(self, case: Case) -> nn.Module:
        qk, heads, k_img = self._dims(case)
        return JafarModule(case.C, qk, heads, k_img)

    def reference(self, case: Case, inputs: dict[str, Tensor], module: nn.Module | None) -> Tensor:
        assert isinstance(module, JafarModule)
        x = inputs["x"]
        q, k = module.queries_keys(x, inputs["image"], case.out_hw)
        wq, bq, wk, bk = mha_qk(module.attention)
        out = reference_head_mean(q @ wq.T + bq, k @ wk.T + bk, x.flatten(2).transpose(1, 2), module.heads)
        return tokens_to_map(out, case.out_hw)

    def params_formula(self, case: Case) -> int:
        qk, _, k_img = self._dims(case)
        C = case.C
        enc = (gn_encoder_params(3, qk, k_img) + 2 * gn_encoder_params(qk, qk, 1)
               + gn_encoder_params(C, qk, 1))
        mha = 3 * qk * qk + qk * C + 3 * qk + qk  # q, k, out (qk×qk), v (qk×C); in-proj and out biases
        return enc + 2 * qk * qk + 9 * qk * qk + 2 * qk + C + mha + 2 * qk

    def mac_terms(self, case: Case) -> dict[str, int]:
        qk, _, k_img = self._dims(case)
        ih, iw = self.image_hw(case)
        P, S = case.B * ih * iw, case.B * case.H * case.w
        L = case.B * case.out_hw[0] * case.out_hw[1]
        return {
            "image_encoder": gn_encoder_macs(P, 3, qk, k_img),
            "rope": 2 * P * qk,
            "query_encoder": gn_encoder_macs(P, qk, qk, 1),
            "key_encoder": gn_encoder_macs(P, qk, qk, 1),
            "feature_encoder": gn_encoder_macs(S, case.C, qk, 1),
            "sft": S * (2 * qk * qk + qk),
            "query_conv": L * 9 * qk * qk,
            "q_proj": L * qk * qk,
            "k_proj": S * qk * qk,
            "qk": L * (S // case.B) * qk,
            "av": L * (S // case.B) * case.C,
        }


JAFAR = Jafar()
