"""CARAFE's reassembly (and FADE's, A2U's) on the window-attention family (kernels/window_attn.cu) as torch
custom ops.

``reassemble_kernel(x, M, K, s, G)`` computes ``out[b,c,i,j] = Σ_m M[b, g(c)·K² + m, i, j] · x[b, c, slot m]``
(DESIGN.md §2) for NCHW x (B, C, H, W) and M (B, G·K², sH, sW), like ``reassembly.reassemble_reference``: the
family's atn with the K×K window, the zero border rule and CARAFE's G groups as the family's groups (a row
holds them side by side, group g's K² weights at g·K²). ``reassemble_fused(x, L, K, s, G)`` is
``reassemble_kernel(x, softmax over each group's K² of L)`` in one kernel (the family's fused_given): the
normalised kernels never exist in memory; its backward recomputes them (window_attn_kernels).
The kernels work channels-last: inputs are permuted to it (free when they already are ``channels_last``)
and the output is returned as an NCHW tensor in ``torch.channels_last`` memory format, so no extra copy of
the output is ever made. Ops (namespace ``upbench``): ``carafe_reassemble`` with autograd, and its
gather-based backward ``carafe_reassemble_dx`` (atn_t) / ``carafe_reassemble_dm`` (sim); each has a fake impl
and a FLOP formula. CUDA tensors run the CuPy build, CPU tensors the host shim.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from . import kernel_binding as kb
from . import window_attn_kernels as wk

FAMILY = wk.FAMILY
ZERO = wk.BORDERS["zero"]  # DESIGN.md §2: an off-map slot holds a zero feature
KERNELS = ("atn", "atn_t", "sim", "fused_given")
available = kb.available  # read by reassembly.py: None when the kernels can run on a device here


@lru_cache(maxsize=16)
def _square(K: int) -> tuple[int, ...]:
    return tuple(wk.Window.square(K).flat)


def _win(K: int, device: torch.device) -> Tensor:
    return wk.offsets_tensor(_square(K), device)


def sources(device: str) -> tuple[str, ...]:
    """The files these kernels' results depend on (Impl.sources): the family's closure and this binding."""
    return FAMILY.sources(device, ("carafe_kernels",))


def _check(op: str, lo: tuple[int, int, int, int], K: int, s: int, G: int, **tensors: Tensor) -> None:
    """K, s, G, and each tensor's dtype, device and NCHW shape for a low-res map ``lo`` = (B, C, H, W):
    ``x`` (B, C, H, W), ``M`` (B, G·K², sH, sW), ``dout`` (B, C, sH, sW)."""
    kb.check_k(op, K, s)
    if isinstance(G, bool) or not isinstance(G, int) or G < 1:
        raise ValueError(f"upbench::{op}: G={G!r}; the group count must be a positive integer")
    kb.check_tensors(op, tensors)
    B, C, H, W = lo
    if C % G:
        raise ValueError(f"upbench::{op}: C={C} is not a multiple of G={G}")
    want = {"x": (B, C, H, W), "M": (B, G * K * K, H * s, W * s), "dout": (B, C, H * s, W * s)}
    for name, t in tensors.items():
        kb.check_shape(op, name, t, want[name])


def _cl(t: Tensor) -> Tensor:
    """(B, C, H, W) → contiguous (B, H, W, C); a view when t is already channels_last."""
    return t.permute(0, 2, 3, 1).contiguous()


def _empty_cl(like: Tensor, B: int, C: int, H: int, W: int) -> Tensor:
    return torch.empty((B, C, H, W), dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


@torch.library.custom_op("upbench::carafe_reassemble", mutates_args=())
def carafe_reassemble(x: Tensor, M: Tensor, K: int, s: int, G: int) -> Tensor:
    kb.check_tensors("carafe_reassemble", {"x": x})
    _check("carafe_reassemble", tuple(x.shape), K, s, G, x=x, M=M)
    B, C, H, W = x.shape
    out = _empty_cl(x, B, C, H * s, W * s)
    FAMILY.launch("atn", B * H * W, _cl(M), _cl(x), out.permute(0, 2, 3, 1), _win(K, x.device), B, H, W, C // G,
                  K * K, s, G, ZERO, grid_y=G)
    return out


@torch.library.custom_op("upbench::carafe_reassemble_dx", mutates_args=())
def carafe_reassemble_dx(M: Tensor, dout: Tensor, K: int, s: int, G: int) -> Tensor:
    kb.check_tensors("carafe_reassemble_dx", {"dout": dout})
    B, C, OH, OW = dout.shape
    kb.check_k("carafe_reassemble_dx", K, s)
    if OH % s or OW % s:
        raise ValueError(f"upbench::carafe_reassemble_dx: dout size {OH}x{OW} is not a multiple of s={s}")
    H, W = OH // s, OW // s
    _check("carafe_reassemble_dx", (B, C, H, W), K, s, G, M=M, dout=dout)
    dx = _empty_cl(dout, B, C, H, W)
    Cg = C // G
    items, gy = kb.atn_t_grid(dout, B * H * W, Cg, G)
    FAMILY.launch("atn_t", items, _cl(M), _cl(dout), dx.permute(0, 2, 3, 1), _win(K, dout.device), B, H, W, Cg,
                  K * K, s, G, ZERO, grid_y=gy)
    return dx


@torch.library.custom_op("upbench::carafe_reassemble_dm", mutates_args=())
def carafe_reassemble_dm(dout: Tensor, x: Tensor, K: int, s: int, G: int) -> Tensor:
    kb.check_tensors("carafe_reassemble_dm", {"x": x})
    _check("carafe_reassemble_dm", tuple(x.shape), K, s, G, dout=dout, x=x)
    B, C, H, W = x.shape
    dM = _empty_cl(x, B, G * K * K, H * s, W * s)
    FAMILY.launch("sim", B * H * W, _cl(dout), _cl(x), dM.permute(0, 2, 3, 1), _win(K, x.device), B, H, W, C // G,
                  K * K, s, G, ZERO, wk.scale_bits(1.0), grid_y=G)
    return dM


@carafe_reassemble.register_fake
def _(x: Tensor, M: Tensor, K: int, s: int, G: int) -> Tensor:
    B, C, H, W = x.shape
    return _empty_cl(x, B, C, H * s, W * s)


@carafe_reassemble_dx.register_fake
def _(M: Tensor, dout: Tensor, K: int, s: int, G: int) -> Tensor:
    B, C, OH, OW = dout.shape
    return _empty_cl(dout, B, C, OH // s, OW // s)


@carafe_reassemble_dm.register_fake
def _(dout: Tensor, x: Tensor, K: int, s: int, G: int) -> Tensor:
    B, C, H, W = x.shape
    return _empty_cl(x, B, G * K * K, H * s, W * s)


def _setup(ctx, inputs, output) -> None:
    x, M, K, s, G = inputs
    ctx.save_for_backward(x, M)
    ctx.K, ctx.s, ctx.G = K, s, G


def _backward(ctx, dout: Tensor):
    x, M = ctx.saved_tensors
    dx = carafe_reassemble_dx(M, dout, ctx.K, ctx.s, ctx.G) if ctx.needs_input_grad[0] else None
    dM = carafe_reassemble_dm(dout, x, ctx.K, ctx.s, ctx.G) if ctx.needs_input_grad[1] else None
    return dx, dM, None, None, None


carafe_reassemble.register_autograd(_backward, setup_context=_setup)


def _taps(B: int, OH: int, OW: int, K: int, C: int) -> int:
    return 2 * B * OH * OW * K * K * C  # FLOPs = 2 × MACs; s²·H·W·K²·C MACs per image (DESIGN.md §2)


@register_flop_formula(torch.ops.upbench.carafe_reassemble)
def _fwd_flop(x_shape, M_shape, K: int, s: int, G: int, *_, **__) -> int:
    return _taps(x_shape[0], M_shape[2], M_shape[3], K, x_shape[1])


@register_flop_formula(torch.ops.upbench.carafe_reassemble_dx)
def _dx_flop(M_shape, dout_shape, K: int, s: int, G: int, *_, **__) -> int:
    return _taps(dout_shape[0], dout_shape[2], dout_shape[3], K, dout_shape[1])


@register_flop_formula(torch.ops.upbench.carafe_reassemble_dm)
def _dm_flop(dout_shape, x_shape, K: int, s: int, G: int, *_, **__) -> int:
    return _taps(dout_shape[0], dout_shape[2], dout_shape[3], K, dout_shape[1])


def reassemble_kernel(x: Tensor, M: Tensor, K: int, s: int, G: int = 1) -> Tensor:
    """The reassembly primitive on the kernels (differentiable); NCHW in, NCHW (channels_last memory) out."""
    return carafe_reassemble(x, M, K, s, G)


def reassemble_fused(x: Tensor, L: Tensor, K: int, s: int, G: int = 1) -> Tensor:
    """``reassemble_kernel(x, L.softmax over each group's K²)`` in one kernel, L the (B, G·K², sH, sW) logits:
    softmax (max-subtracted, in the accumulation type) fused into the reassembly, no kernel map in memory.
    Differentiable (the backward recomputes the softmax; deterministic gathers). NCHW in, NCHW
    (channels_last memory) out."""
    op = "carafe_reassemble_fused"
    kb.check_tensors(op, {"x": x})
    _check(op, tuple(x.shape), K, s, G, x=x, M=L)
    out = wk.window_attn_fused_given(L.permute(0, 2, 3, 1), x.permute(0, 2, 3, 1), list(_square(K)), ZERO, s, G)
    return out.permute(0, 3, 1, 2)
