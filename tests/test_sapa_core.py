"""The SAPA core op: reference against a scalar loop; unfold and lean against the reference; memory."""

import math

import pytest
import torch

from upbench.cases import Case
from upbench.memory import peak_cpu
from upbench.operators.sapa_core import SAPA_CORE, core_lean, core_reference, core_unfold

SHAPES = [  # (B, H, W, d, C, K, s): border-heavy (H or W ≤ K), odd, non-square
    (2, 3, 5, 7, 5, 5, 2), (1, 4, 4, 3, 6, 7, 3), (1, 6, 9, 4, 5, 3, 1), (1, 5, 4, 4, 3, 1, 4),
    (1, 2, 7, 3, 33, 7, 2), (2, 7, 6, 5, 4, 3, 3),
]


def _inputs(B, H, W, d, C, s, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H * s, W * s, d, generator=g, dtype=dtype),
            torch.randn(B, H, W, d, generator=g, dtype=dtype),
            torch.randn(B, H, W, C, generator=g, dtype=dtype))


def _scalar_loop(q, k, v, K, s):
    """SAPA's definition written per pixel and slot (DESIGN.md §2–§3): the truth on tiny shapes."""
    B, H, W, C = v.shape
    r = (K - 1) // 2
    out = torch.zeros(B, H * s, W * s, C, dtype=torch.float64)
    for b in range(B):
        for i in range(H * s):
            for j in range(W * s):
                sims, vals = [], []
                for m in range(K * K):
                    u, w = i // s + m // K - r, j // s + m % K - r
                    inside = 0 <= u < H and 0 <= w < W
                    sims.append(float(q[b, i, j] @ k[b, u, w]) if inside else 0.0)  # off-map slot: similarity 0
                    vals.append(v[b, u, w] if inside else torch.zeros(C, dtype=torch.float64))
                e = [math.exp(x) for x in sims]
                out[b, i, j] = sum(e[m] / sum(e) * vals[m] for m in range(K * K))  # all K² slots normalise
    return out


@pytest.mark.parametrize("shape", SHAPES[:4])
def test_reference_matches_the_scalar_definition(shape):
    B, H, W, d, C, K, s = shape
    q, k, v = _inputs(B, H, W, d, C, s)
    torch.testing.assert_close(core_reference(q, k, v, K, s), _scalar_loop(q, k, v, K, s), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn", [core_unfold, core_lean])
@pytest.mark.parametrize("shape", SHAPES)
def test_impls_match_the_reference(fn, shape):
    B, H, W, d, C, K, s = shape
    q, k, v = _inputs(B, H, W, d, C, s, seed=sum(shape))
    ref = core_reference(q, k, v, K, s)
    torch.testing.assert_close(fn(q, k, v, K, s), ref, rtol=1e-12, atol=1e-12)
    got32 = fn(q.float(), k.float(), v.float(), K, s).double()
    assert (got32 - ref).abs().max() / ref.pow(2).mean().sqrt() < 1e-5


@pytest.mark.parametrize("fn", [core_unfold, core_lean])
def test_gradcheck_float64(fn):
    q, k, v = (t.requires_grad_() for t in _inputs(1, 3, 2, 3, 2, 2))
    assert torch.autograd.gradcheck(lambda q, k, v: fn(q, k, v, 3, 2), (q, k, v))


def test_macs_by_hand():
    c = Case("sapa", B=1, C=2, Cy=3, H=2, W=3, s=2, K=3)
    # 4×6 output pixels × 9 slots × (3 similarity + 2 aggregation) multiply-adds
    assert SAPA_CORE.macs(c) == 24 * 9 * (3 + 2) == 1080
    assert SAPA_CORE.min_bytes(c) == 4 * (24 * 3 + 6 * 3 + 6 * 2 + 24 * 2)


def _peak(fn, C, H, K):
    q, k, v = _inputs(1, H, H, C, C, 2, dtype=torch.float32)
    with torch.no_grad():
        return peak_cpu(lambda: fn(q, k, v, K, 2))


def test_unfold_memory_grows_with_K_squared_and_lean_does_not():
    unfold = {K: _peak(core_unfold, 64, 32, K) for K in (3, 7)}
    lean = {K: _peak(core_lean, 64, 32, K) for K in (3, 7)}
    assert unfold[7] / unfold[3] > 3  # the unfolded tensors scale with K² = 49 / 9
    assert lean[7] / lean[3] < 1.6  # only the (sH, sW, K²) similarity map grows


def test_headline_memory_ratio_at_C256_K5_64():
    ratio = _peak(core_unfold, 256, 64, 5) / _peak(core_lean, 256, 64, 5)
    assert ratio >= 5
