"""CARAFE's reassembly on the window-attention family (kernels/window_attn.cu) through the CPU shim, against
reassemble_reference: the plain reassembly (given kernels) and the fused one (given logits, softmax inside)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from upbench import _cpu_shim
from upbench.memory import peak_cpu
from upbench.operators import carafe_kernels as ck
from upbench.operators import window_attn_kernels as wk
from upbench.operators.reassembly import reassemble_reference

pytestmark = pytest.mark.skipif(_cpu_shim.unavailable_reason() is not None,
                                reason=str(_cpu_shim.unavailable_reason()))

# (B, C, H, W, K, s, G): border-heavy, odd, non-square, group widths not a multiple of the chunk, G = C
SHAPES = [(1, 8, 3, 4, 3, 2, 1), (2, 12, 5, 3, 5, 3, 3), (1, 130, 4, 5, 3, 2, 2), (1, 6, 2, 2, 7, 1, 6),
          (2, 64, 6, 7, 5, 2, 4), (1, 5, 3, 3, 11, 2, 1), (1, 70, 9, 8, 5, 4, 1), (1, 120, 3, 4, 3, 2, 1)]
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


@pytest.fixture
def poisoned(monkeypatch):
    """Every output the ops allocate starts as NaN, so an unwritten element fails the comparison."""
    real, real_hi = ck._empty_cl, wk._hi

    def nan_empty(*args):
        return real(*args).fill_(float("nan"))

    def nan_hi(*args):
        return real_hi(*args).fill_(float("nan"))

    monkeypatch.setattr(ck, "_empty_cl", nan_empty)
    monkeypatch.setattr(wk, "_hi", nan_hi)  # the fused op's output


def _inputs(shape, dtype, seed=0):
    B, C, H, W, K, s, G = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64).to(dtype)
    M = torch.randn(B, G * K * K, H * s, W * s, generator=g, dtype=torch.float64).softmax(1).to(dtype)
    dout = torch.randn(B, C, H * s, W * s, generator=g, dtype=torch.float64).to(dtype)
    return x, M, dout


def _check(shape, dtype):
    B, C, H, W, K, s, G = shape
    x, M, dout = _inputs(shape, dtype)
    x.requires_grad_(), M.requires_grad_()
    out = ck.reassemble_kernel(x, M, K, s, G)
    dx, dM = torch.autograd.grad(out, (x, M), dout)
    x64, M64 = (t.detach().double().requires_grad_() for t in (x, M))
    ref = reassemble_reference(x64, M64, K, s, G)
    rx, rM = torch.autograd.grad(ref, (x64, M64), dout.double())
    for name, got, want in (("out", out, ref), ("dx", dx, rx), ("dM", dM, rM)):
        assert torch.isfinite(got).all(), f"{name} {shape}: unwritten elements"
        err = (got.double() - want).abs().max().item()
        assert err <= TOL[dtype] * want.abs().max().item(), f"{name} {shape} {dtype}: max error {err:.3g}"
    assert out.shape == (B, C, H * s, W * s) and out.is_contiguous(memory_format=torch.channels_last)


def _check_fused(shape, dtype):
    """reassemble_fused(x, L) against the reference of softmax(L) then reassembly, forward and backward."""
    B, C, H, W, K, s, G = shape
    x, _, dout = _inputs(shape, dtype)
    L = torch.randn(B, G * K * K, H * s, W * s, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    L = (3 * L).to(dtype).requires_grad_()  # spread logits: weights far from uniform
    x.requires_grad_()
    out = ck.reassemble_fused(x, L, K, s, G)
    dx, dL = torch.autograd.grad(out, (x, L), dout)
    x64, L64 = (t.detach().double().requires_grad_() for t in (x, L))
    ref = reassemble_reference(x64, L64.view(B, G, K * K, H * s, W * s).softmax(2).view(L64.shape), K, s, G)
    rx, rL = torch.autograd.grad(ref, (x64, L64), dout.double())
    for name, got, want in (("out", out, ref), ("dx", dx, rx), ("dL", dL, rL)):
        assert torch.isfinite(got).all(), f"fused {name} {shape}: unwritten elements"
        err = (got.double() - want).abs().max().item()
        assert err <= 4 * TOL[dtype] * want.abs().max().item(), f"fused {name} {shape} {dtype}: max error {err:.3g}"
    assert out.shape == (B, C, H * s, W * s) and out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}C{}H{}W{}K{}s{}G{}".format(*s))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_fast_build_matches_reference(shape, dtype, poisoned):
    _check(shape, dtype)
    _check_fused(shape, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fast_build_16bit(dtype, poisoned):
    _check(SHAPES[2], dtype)
    _check(SHAPES[4], dtype)
    _check_fused(SHAPES[4], dtype)


def test_simt_build(poisoned):
    with _cpu_shim.use_variant("simt"):
        for shape in ((1, 8, 3, 4, 3, 2, 1), (1, 70, 2, 3, 5, 3, 2), (1, 6, 2, 2, 7, 1, 6)):
            _check(shape, torch.float32)
            _check_fused(shape, torch.float32)
        _check((1, 66, 2, 3, 5, 2, 1), torch.bfloat16)


def test_channels_last_input_is_not_copied_and_nchw_works():
    x, M, _ = _inputs(SHAPES[4], torch.float32)
    B, C, H, W, K, s, G = SHAPES[4]
    a = ck.reassemble_kernel(x, M, K, s, G)
    b = ck.reassemble_kernel(x.contiguous(memory_format=torch.channels_last),
                             M.contiguous(memory_format=torch.channels_last), K, s, G)
    assert torch.equal(a, b)


def test_opcheck_gradcheck_and_flops():
    B, C, H, W, K, s, G = 1, 4, 3, 2, 3, 2, 2
    x, M, dout = _inputs((B, C, H, W, K, s, G), torch.float64)
    x.requires_grad_(), M.requires_grad_()
    torch.library.opcheck(ck.carafe_reassemble, (x, M, K, s, G))
    torch.library.opcheck(ck.carafe_reassemble_dx, (M.detach(), dout, K, s, G))
    torch.library.opcheck(ck.carafe_reassemble_dm, (dout, x.detach(), K, s, G))
    assert torch.autograd.gradcheck(lambda x, M: ck.reassemble_kernel(x, M, K, s, G), (x, M))
    with FlopCounterMode(display=False) as fc:
        ck.reassemble_kernel(x, M, K, s, G).sum().backward()
    assert fc.get_total_flops() == 3 * 2 * B * H * s * W * s * K * K * C
    L = torch.randn(B, G * K * K, H * s, W * s, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, L: ck.reassemble_fused(x, L, K, s, G), (x, L))
    with FlopCounterMode(display=False) as fc:  # the same taps as the unfused chain (softmax not counted)
        ck.reassemble_fused(x, L, K, s, G).sum().backward()
    assert fc.get_total_flops() == 3 * 2 * B * H * s * W * s * K * K * C


def test_fused_backward_is_deterministic_and_leaves_no_kernel_map():
    B, C, H, W, K, s, G = SHAPES[4]
    x, _, dout = _inputs(SHAPES[4], torch.float32)
    L = torch.randn(B, G * K * K, H * s, W * s)
    grads = []
    for _ in range(3):
        xx, LL = x.clone().requires_grad_(), L.clone().requires_grad_()
        grads.append(torch.autograd.grad(ck.reassemble_fused(xx, LL, K, s, G), (xx, LL), dout))
    assert all(torch.equal(a, b) for g in grads[1:] for a, b in zip(grads[0], g, strict=True))
    x, L = (t.contiguous(memory_format=torch.channels_last) for t in (x, L))  # else the op copies them
    with torch.no_grad():  # forward only: the output is the one allocation
        extra = peak_cpu(lambda: ck.reassemble_fused(x, L, K, s, G))
    assert extra <= 1.05 * B * C * H * s * W * s * 4


def test_errors_and_availability():
    x, M, _ = _inputs(SHAPES[0], torch.float32)
    with pytest.raises(ValueError, match="C=8 is not a multiple of G=3"):
        ck.reassemble_kernel(x, torch.zeros(1, 27, 6, 8), 3, 2, 3)
    with pytest.raises(ValueError, match="K=4; the kernels need an odd K"):
        ck.reassemble_kernel(x, M, 4, 2, 1)
    with pytest.raises(ValueError, match="carafe_reassemble_fused: C=8 is not a multiple of G=3"):
        ck.reassemble_fused(x, torch.zeros(1, 27, 6, 8), 3, 2, 3)
    assert ck.available("cpu") is None
    if not torch.cuda.is_available():
        assert ck.available("cuda") == "needs a CUDA device (torch.cuda.is_available() is False)"
