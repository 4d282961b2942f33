"""LoftUp (Huang et al., 2025): per-pixel queries from image Fourier features, cross-attending to every token.

Module (official hub models: ChannelNorm + LoftUp(C, sine low-res PE, 20 frequencies, 4 heads, 2 layers)):
- the low-res features are LayerNorm-ed over channels and concatenated with a 20-channel sine/cosine
  coordinate code (5 frequencies exp(linspace(−2, 10, 5)), learned phase biases) → tokens of width D = C + 20;
- the image, at the output size (bilinearly resized when it is not; LoftUp's output is the image's size),
  is min-max scaled per channel over the batch to [−½, ½] and encoded as sin/cos of (row, column, r, g, b) ×
  20 frequencies exp(linspace(−2, 10, 20)) plus learned phase biases, with the scaled image appended
  (203 channels) → LayerNorm over channels → Conv3×3 → BN → ReLU → Conv3×3 → BN → ReLU (width D);
- 2 layers of: q += MHA(LN(q), LN(kv), LN(kv)) (nn.MultiheadAttention(D, 4 heads)); q += FF(q) with
  FF = LN → Linear(D→C) → GELU → Linear(C→D); then LN; then Conv1×1 (D→C) and a LayerNorm over channels
  (eps 1e-6). Not a convex combination: projections, MLPs and norms act on the attended values.
Impls: ``official`` calls nn.MultiheadAttention as the official code does (its default need_weights=True
materialises the per-head weights (B·4, L, h·w) and their average); ``lean`` runs the two layers chunk by chunk
of query pixels with fused scaled-dot-product attention and writes each chunk's output directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from upbench.cases import Case
from upbench.plugin import DEFAULT_TOLERANCE, HyperParam, Impl

from .jafar import split_heads
from .vfm_common import PATCH, VfmOperator, chunk_rows, maybe_checkpoint

N_FREQS, PE_FREQS = 20, 5
START = 5 * N_FREQS * 2 + 3  # sin and cos of 5 inputs × 20 frequencies, plus the image


def fourier(t: Tensor, bias: Tensor, n_freqs: int) -> Tensor:
    """sin/cos of (coordinates ⊕ t's channels) × exp(linspace(−2, 10, n)) + learned phases; bias (2, k, n)."""
    B, c, h, w = t.shape
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, h, dtype=t.dtype, device=t.device),
                                      torch.linspace(-1, 1, w, dtype=t.dtype, device=t.device), indexing="ij"))
    feats = torch.cat([grid.expand(B, 2, h, w), t], 1) if c else grid.expand(B, 2, h, w)
    k = feats.shape[1]
    freqs = torch.exp(torch.linspace(-2, 10, n_freqs, dtype=t.dtype, device=t.device)).view(1, n_freqs, 1, 1, 1)
    f = feats.unsqueeze(1) * freqs  # (B, n, k, h, w)
    # The official phase parameter has shape (2, k, n) and is read as (n, k): kept as stored.
    sin = (f + bias[0].reshape(1, n_freqs, k, 1, 1)).reshape(B, n_freqs * k, h, w).sin()
    cos = (f + bias[1].reshape(1, n_freqs, k, 1, 1)).reshape(B, n_freqs * k, h, w).cos()
    return torch.cat([sin, cos, t], 1) if c else torch.cat([sin, cos], 1)


class Layer(nn.Module):
    def __init__(self, D: int, C: int, heads: int) -> None:
        super().__init__()
        self.norm_q, self.norm_kv = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attention = nn.MultiheadAttention(D, heads)
        self.ff = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, C), nn.GELU(), nn.Linear(C, D))


class LoftupModule(nn.Module):
    def __init__(self, C: int, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        D = C + 2 * 2 * PE_FREQS
        self.heads = heads
        self.channel_norm = nn.LayerNorm(C)
        self.pe_bias = nn.Parameter(torch.randn(2, 2, PE_FREQS))
        self.image_bias = nn.Parameter(torch.randn(2, 5, N_FREQS))
        self.image_norm = nn.LayerNorm(START)
        self.first_conv = nn.Sequential(nn.Conv2d(START, D, 3, padding=1), nn.BatchNorm2d(D), nn.ReLU(),
                                        nn.Conv2d(D, D, 3, padding=1), nn.BatchNorm2d(D), nn.ReLU())
        self.layers = nn.ModuleList(Layer(D, C, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(D)
        self.final = nn.Conv2d(D, C, 1)
        self.final_norm = nn.LayerNorm(C, eps=1e-6)

    def queries(self, image: Tensor, out_hw: tuple[int, int]) -> Tensor:
        """Query tokens (B, L, D) from the image at the output size."""
        if image.shape[-2:] != out_hw:
            image = F.interpolate(image, size=out_hw, mode="bilinear", align_corners=False)
        lo = image.amin((0, 2, 3), keepdim=True)
        image = (image - lo) / (image.amax((0, 2, 3), keepdim=True) - lo).clamp_min(1e-4) - 0.5
        f = self.image_norm(fourier(image, self.image_bias, N_FREQS).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.first_conv(f).flatten(2).transpose(1, 2)

    def tokens(self, x: Tensor) -> Tensor:
        """Key/value tokens (B, S, D): normalised features ⊕ their coordinate code."""
        xn = self.channel_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return torch.cat([xn, fourier(xn[:, :0], self.pe_bias, PE_FREQS)], 1).flatten(2).transpose(1, 2)

    def finish(self, q: Tensor) -> Tensor:
        """Final LN, Conv1×1 and channel LayerNorm, token-wise: (B, L, D) → (B, L, C)."""
        return self.final_norm(F.linear(self.norm(q), self.final.weight.flatten(1), self.final.bias))


def _attend_mha(layer: Layer, q: Tensor, kv: Tensor) -> Tensor:
    kvn = layer.norm_kv(kv).transpose(0, 1)
    out, _ = layer.attention(layer.norm_q(q).transpose(0, 1), kvn, kvn)  # need_weights=True: the default
    return out.transpose(0, 1)


def _attend_sdpa(layer: Layer, q: Tensor, kv: Tensor, heads: int) -> Tensor:
    a = layer.attention
    w, b = a.in_proj_weight.chunk(3), a.in_proj_bias.chunk(3)
    kvn = layer.norm_kv(kv)
    qh = split_heads(F.linear(layer.norm_q(q), w[0], b[0]), heads)
    kh, vh = split_heads(F.linear(kvn, w[1], b[1]), heads), split_heads(F.linear(kvn, w[2], b[2]), heads)
    o = F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).flatten(2)
    return a.out_proj(o)


def _to_map(t: Tensor, out_hw: tuple[int, int]) -> Tensor:
    return t.transpose(1, 2).unflatten(2, out_hw)


def _official(case: Case, m: LoftupModule):
    def run(x: Tensor, image: Tensor) -> Tensor:
        q, kv = m.queries(image, case.out_hw), m.tokens(x)
        for layer in m.layers:
            q = _attend_mha(layer, q, kv) + q
            q = layer.ff(q) + q
        return _to_map(m.finish(q), case.out_hw)
    return run


def _lean(case: Case, m: LoftupModule):
    def block(qc: Tensor, kv: Tensor) -> Tensor:
        for layer in m.layers:
            qc = _attend_sdpa(layer, qc, kv, m.heads) + qc
            qc = layer.ff(qc) + qc
        return m.finish(qc)

    def run(x: Tensor, image: Tensor) -> Tensor:
        q, kv = m.queries(image, case.out_hw), m.tokens(x)
        B, L, D = q.shape
        out = q.new_empty(B, L, x.shape[1])
        n = chunk_rows(L, 4 * D, L * x.shape[1])
        for a in range(0, L, n):
            out[:, a:a + n] = maybe_checkpoint(block, q[:, a:a + n], kv)
        return _to_map(out, case.out_hw)
    return run


class Loftup(VfmOperator):
    name = "loftup"
    description = ("LoftUp: image Fourier features → 2 conv layers as per-pixel queries; 2-layer cross-"
                   "attention transformer over all low-res tokens (+ sine PE); Conv1×1 and LayerNorm")
    hyperparams = (PATCH, HyperParam("heads", 4, "attention heads (C + 20 must divide)"),
                   HyperParam("layers", 2, "cross-attention layers"))
    impls = (
        Impl("official", _official, "nn.MultiheadAttention with its default need_weights=True, as the "
             "official code: per-head and averaged (L, h·w) weights materialised"),
        Impl("lean", _lean, "fused scaled_dot_product_attention, the transformer run per chunk of query "
             "pixels into the output; checkpointed chunks in backward"),
    )
    model_impls = ("lean", "official")
    # The image code takes sin/cos of phases up to e^10 ≈ 2·10⁴ rad: in fp32 each phase is already rounded
    # by ~10⁻³, so fp32 (and far more so bf16) departs from the float64 definition by this much.
    tolerance = {**DEFAULT_TOLERANCE, "float32": 2e-2}

    def _dims(self, case: Case) -> tuple[int, int, int]:
        p = self.hp(case)
        return case.C + 2 * 2 * PE_FREQS, int(p["heads"]), int(p["layers"])

    def check(self, case: Case) -> str | None:
        why = super().check(case)
        if why:
            return why
        D, heads, layers = self._dims(case)
        if heads < 1 or D % heads or layers < 1:
            return f"loftup needs C + 20 divisible by heads and layers ≥ 1 (got C={case.C}, heads={heads})"
        return None

    def module(self, case: Case) -> nn.Module:
        _, heads, layers = self._dims(case)
        return LoftupModule(case.C, heads, layers)

    def reference(self, case: Case, inputs: dict[str, Tensor], module: nn.Module | None) -> Tensor:
        """Attention written out: per-head softmax(q·kᵀ/√d)·v with the in/out projections by hand."""
        assert isinstance(module, LoftupModule)
        q, kv = module.queries(inputs["image"], case.out_hw), module.tokens(inputs["x"])
        for layer in module.layers:
            a = layer.attention
            w, b = a.in_proj_weight.chunk(3), a.in_proj_bias.chunk(3)
            kvn, qn = layer.norm_kv(kv), layer.norm_q(q)
            qh = split_heads(qn @ w[0].T + b[0], module.heads)
            kh = split_heads(kvn @ w[1].T + b[1], module.heads)
            vh = split_heads(kvn @ w[2].T + b[2], module.heads)
            att = torch.einsum("bnld,bnsd->bnls", qh, kh) / qh.shape[-1] ** 0.5
            o = torch.einsum("bnls,bnsd->bnld", att.softmax(-1), vh).transpose(1, 2).flatten(2)
            q = o @ a.out_proj.weight.T + a.out_proj.bias + q
            q = layer.ff(q) + q
        return _to_map(module.finish(q), case.out_hw)

    def params_formula(self, case: Case) -> int:
        D, _, layers = self._dims(case)
        C = case.C
        first = 2 * START + 9 * START * D + D + 2 * D + 9 * D * D + D + 2 * D
        layer = 4 * D + 4 * D * D + 4 * D + 2 * D + D * C + C + C * D + D
        return 2 * C + 2 * 2 * PE_FREQS + 2 * 5 * N_FREQS + first + layers * layer + 2 * D + D * C + C + 2 * C

    def mac_terms(self, case: Case) -> dict[str, int]:
        D, _, layers = self._dims(case)
        C = case.C
        L = case.B * case.out_hw[0] * case.out_hw[1]
        S = case.B * case.H * case.w
        resized = self.image_hw(case) != case.out_hw
        return {
            "image_resize": 4 * 3 * L if resized else 0,
            "first_conv": L * 9 * (START * D + D * D),
            "q_proj": layers * L * D * D,
            "kv_proj": layers * 2 * S * D * D,
            "qk": layers * L * (S // case.B) * D,
            "av": layers * L * (S // case.B) * D,
            "out_proj": layers * L * D * D,
            "ff": layers * L * 2 * D * C,
            "final": L * D * C,
        }


LOFTUP = Loftup()
