"""SAPA's kernel ops on the window-attention family (kernels/window_attn.cu), and the kernel-backed impls of the
SAPA core.

Ops (namespace ``upbench``), channels-last, all of one dtype (float64/32/16, bfloat16) and device:
  ``sapa_sim(q, k, K, s) -> S``       S[b,i,j,m] = <q(i,j), k(slot m)>, 0 off the map
  ``sapa_atn(A, v, K, s) -> out``     out(i,j) = Σ_m A[b,i,j,m] · v(slot m)
  ``sapa_atn_t(A, g, K, s) -> dv``    the transpose of atn as a gather (backward of both ops)
  ``sapa_fused(q, k, v, K, s)``       atn(softmax(sim)) without the K² map; forward only
Each launches the family's entry of the same name (window_attn_sim, …) with the K×K window, the zero border rule
of DESIGN.md §2, one group and scale 1; SAPA keeps its own ops for their argument checks (K, not an offset
list), messages and FLOP formulas. Each has a fake (meta) impl, a FLOP formula for FlopCounterMode, and sim/atn
an autograd formula built from the same ops, so torch.compile, opcheck and gradcheck work. A CUDA tensor runs the
CuPy build (upbench._cuda), a CPU tensor the same source through the host shim (upbench._cpu_shim).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from upbench.cases import Case
from upbench.plugin import Impl

from . import kernel_binding as kb
from . import window_attn_kernels as wk

FAMILY = wk.FAMILY
MAX_K = kb.MAX_K
ZERO = wk.BORDERS["zero"]  # DESIGN.md §2: an off-map slot is a zero row, its logit 0
ONE = wk.scale_bits(1.0)
KERNELS = ("sim", "atn", "atn_t", "fused")


@lru_cache(maxsize=16)
def _square(K: int) -> tuple[int, ...]:
    return tuple(wk.Window.square(K).flat)


def _win(K: int, device: torch.device) -> Tensor:
    """The K×K window's offsets as the family's kernels read them."""
    return wk.offsets_tensor(_square(K), device)


def _check_hi(op: str, name: str, hi: Tensor, lo_shape: torch.Size | tuple[int, ...], s: int,
              width: int | None) -> None:
    B, H, W = lo_shape[:3]
    kb.check_shape(op, name, hi, (B, H * s, W * s, width))


# The *_into functions write into caller-provided outputs (tests poison them first); the ops allocate. Each
# validates everything the kernel indexes by (K against the scratch size, shapes, dtype, device, contiguity),
# so no call reaches a kernel with arguments it would read or write out of bounds.
def sim_into(q: Tensor, k: Tensor, S: Tensor, K: int, s: int) -> Tensor:
    op = "sapa_sim"
    kb.check_k(op, K, s)
    kb.check_tensors(op, {"q": q, "k": k, "S": S}, contiguous=True)
    B, H, W, D = k.shape
    _check_hi(op, "q", q, k.shape, s, D)
    _check_hi(op, "S", S, k.shape, s, K * K)
    FAMILY.launch("sim", B * H * W, q, k, S, _win(K, q.device), B, H, W, D, K * K, s, 1, ZERO, ONE)
    return S


def atn_into(A: Tensor, v: Tensor, out: Tensor, K: int, s: int) -> Tensor:
    op = "sapa_atn"
    kb.check_k(op, K, s)
    kb.check_tensors(op, {"A": A, "v": v, "out": out}, contiguous=True)
    B, H, W, C = v.shape
    _check_hi(op, "A", A, v.shape, s, K * K)
    _check_hi(op, "out", out, v.shape, s, C)
    FAMILY.launch("atn", B * H * W, A, v, out, _win(K, v.device), B, H, W, C, K * K, s, 1, ZERO)
    return out


def atn_t_into(A: Tensor, g: Tensor, out: Tensor, K: int, s: int) -> Tensor:
    op = "sapa_atn_t"
    kb.check_k(op, K, s)
    kb.check_tensors(op, {"A": A, "g": g, "out": out}, contiguous=True)
    B, H, W, C = out.shape
    _check_hi(op, "A", A, out.shape, s, K * K)
    _check_hi(op, "g", g, out.shape, s, C)
    items, gy = kb.atn_t_grid(g, B * H * W, C, 1)
    FAMILY.launch("atn_t", items, A, g, out, _win(K, g.device), B, H, W, C, K * K, s, 1, ZERO, grid_y=gy)
    return out


def fused_into(q: Tensor, k: Tensor, v: Tensor, out: Tensor, K: int, s: int) -> Tensor:
    op = "sapa_fused"
    kb.check_k(op, K, s)
    kb.check_tensors(op, {"q": q, "k": k, "v": v, "out": out}, contiguous=True)
    B, H, W, D = k.shape
    C = v.shape[3]
    kb.check_shape(op, "v", v, (B, H, W, None))
    _check_hi(op, "q", q, k.shape, s, D)
    _check_hi(op, "out", out, k.shape, s, C)
    FAMILY.launch("fused", B * H * W, q, k, v, out, _win(K, q.device), B, H, W, D, C, K * K, s, 1, ZERO, ONE)
    return out


# -- custom ops ----------------------------------------------------------------------------------------------
@torch.library.custom_op("upbench::sapa_sim", mutates_args=())
def sapa_sim(q: Tensor, k: Tensor, K: int, s: int) -> Tensor:
    kb.check_k("sapa_sim", K, s)
    kb.check_tensors("sapa_sim", {"q": q, "k": k})
    q, k = q.contiguous(), k.contiguous()
    B, H, W, _ = k.shape
    return sim_into(q, k, q.new_empty(B, H * s, W * s, K * K), K, s)


@torch.library.custom_op("upbench::sapa_atn", mutates_args=())
def sapa_atn(A: Tensor, v: Tensor, K: int, s: int) -> Tensor:
    kb.check_k("sapa_atn", K, s)
    kb.check_tensors("sapa_atn", {"A": A, "v": v})
    A, v = A.contiguous(), v.contiguous()
    B, H, W, C = v.shape
    return atn_into(A, v, v.new_empty(B, H * s, W * s, C), K, s)


@torch.library.custom_op("upbench::sapa_atn_t", mutates_args=())
def sapa_atn_t(A: Tensor, g: Tensor, K: int, s: int) -> Tensor:
    kb.check_k("sapa_atn_t", K, s)
    kb.check_tensors("sapa_atn_t", {"A": A, "g": g})
    B, OH, OW, C = g.shape
    if OH % s or OW % s:
        raise ValueError(f"upbench::sapa_atn_t: high-res size {OH}x{OW} is not a multiple of s={s}")
    A, g = A.contiguous(), g.contiguous()
    return atn_t_into(A, g, g.new_empty(B, OH // s, OW // s, C), K, s)


@torch.library.custom_op("upbench::sapa_fused", mutates_args=())
def sapa_fused(q: Tensor, k: Tensor, v: Tensor, K: int, s: int) -> Tensor:
    kb.check_k("sapa_fused", K, s)
    kb.check_tensors("sapa_fused", {"q": q, "k": k, "v": v})
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, H, W, C = v.shape
    return fused_into(q, k, v, v.new_empty(B, H * s, W * s, C), K, s)


@sapa_sim.register_fake
def _(q: Tensor, k: Tensor, K: int, s: int) -> Tensor:
    B, H, W, _ = k.shape
    return q.new_empty(B, H * s, W * s, K * K)


@sapa_atn.register_fake
def _(A: Tensor, v: Tensor, K: int, s: int) -> Tensor:
    B, H, W, C = v.shape
    return v.new_empty(B, H * s, W * s, C)


@sapa_atn_t.register_fake
def _(A: Tensor, g: Tensor, K: int, s: int) -> Tensor:
    B, OH, OW, C = g.shape
    return g.new_empty(B, OH // s, OW // s, C)


@sapa_fused.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, K: int, s: int) -> Tensor:
    B, H, W, C = v.shape
    return v.new_empty(B, H * s, W * s, C)


def _setup(ctx, inputs, output) -> None:
    a, b, K, s = inputs
    ctx.save_for_backward(a, b)
    ctx.K, ctx.s = K, s


def _sim_backward(ctx, dS: Tensor):
    q, k = ctx.saved_tensors
    dS = dS.contiguous()
    dq = sapa_atn(dS, k, ctx.K, ctx.s) if ctx.needs_input_grad[0] else None
    dk = sapa_atn_t(dS, q, ctx.K, ctx.s) if ctx.needs_input_grad[1] else None
    return dq, dk, None, None


def _atn_backward(ctx, dout: Tensor):
    A, v = ctx.saved_tensors
    dout = dout.contiguous()
    dA = sapa_sim(dout, v, ctx.K, ctx.s) if ctx.needs_input_grad[0] else None  # 0 for off-map slots, as A's use
    dv = sapa_atn_t(A, dout, ctx.K, ctx.s) if ctx.needs_input_grad[1] else None
    return dA, dv, None, None


sapa_sim.register_autograd(_sim_backward, setup_context=_setup)
sapa_atn.register_autograd(_atn_backward, setup_context=_setup)


# -- FLOPs (FlopCounterMode counts FLOPs = 2 × MACs; every K² tap is counted, off-map ones included) -------
@register_flop_formula(torch.ops.upbench.sapa_sim)
def _sim_flop(q_shape, k_shape, K: int, s: int, *_, **__) -> int:
    B, OH, OW, D = q_shape
    return 2 * B * OH * OW * K * K * D


@register_flop_formula(torch.ops.upbench.sapa_atn)
def _atn_flop(A_shape, v_shape, K: int, s: int, *_, **__) -> int:
    B, OH, OW, _ = A_shape
    return 2 * B * OH * OW * K * K * v_shape[3]


@register_flop_formula(torch.ops.upbench.sapa_atn_t)
def _atn_t_flop(A_shape, g_shape, K: int, s: int, *_, **__) -> int:
    B, OH, OW, C = g_shape
    return 2 * B * OH * OW * K * K * C


@register_flop_formula(torch.ops.upbench.sapa_fused)
def _fused_flop(q_shape, k_shape, v_shape, K: int, s: int, *_, **__) -> int:
    B, OH, OW, D = q_shape
    return 2 * B * OH * OW * K * K * (D + v_shape[3])


# -- float64 references of the single ops, written like sapa_core.core_reference (an index gather per slot) --
def _slots(H: int, W: int, K: int, s: int):
    """Per slot m: low-res row/col index maps (sH,), (sW,) clamped onto the map, and the on-map mask (sH, sW)."""
    r = (K - 1) // 2
    pi, pj = torch.arange(H * s) // s, torch.arange(W * s) // s
    for m in range(K * K):
        u, w = pi + m // K - r, pj + m % K - r
        ok = ((u >= 0) & (u < H))[:, None] & ((w >= 0) & (w < W))[None, :]
        yield u.clamp(0, H - 1)[:, None], w.clamp(0, W - 1)[None, :], ok


def sim_reference(q: Tensor, k: Tensor, K: int, s: int) -> Tensor:
    B, H, W, _ = k.shape
    return torch.stack([(q * k[:, u, w]).sum(-1) * ok for u, w, ok in _slots(H, W, K, s)], -1)


def atn_reference(A: Tensor, v: Tensor, K: int, s: int) -> Tensor:
    B, H, W, _ = v.shape
    return sum(A[..., m:m + 1] * v[:, u, w] * ok[None, :, :, None]
               for m, (u, w, ok) in enumerate(_slots(H, W, K, s)))


def atn_t_reference(A: Tensor, g: Tensor, K: int, s: int) -> Tensor:
    """The gradient of <atn_reference(A, v), g> with respect to v: what atn_t must compute."""
    B, OH, OW, C = g.shape
    v = torch.zeros(B, OH // s, OW // s, C, dtype=g.dtype, requires_grad=True)
    (dv,) = torch.autograd.grad(atn_reference(A, v, K, s), v, g)
    return dv


# -- the core op on the kernels, and its impls --------------------------------------------------------------
def core_kernel(q: Tensor, k: Tensor, v: Tensor, K: int, s: int) -> Tensor:
    """sim → softmax (torch) → atn on the kernels; differentiable."""
    return sapa_atn(sapa_sim(q, k, K, s).softmax(-1), v, K, s)


def core_kernel_fused(q: Tensor, k: Tensor, v: Tensor, K: int, s: int) -> Tensor:
    """One kernel: the K² similarities of a pixel never leave registers / shared memory. Forward only."""
    return sapa_fused(q, k, v, K, s)


def _supports(case: Case) -> str | None:
    if case.K is None or not (1 <= case.K <= MAX_K and case.K % 2 == 1):
        return f"the SAPA kernels need an odd K from 1 to {MAX_K} (got K={case.K})"
    return None


def _factory(fn: Callable[..., Tensor], device: str):
    def factory(case: Case, module: None) -> Callable[..., Tensor]:
        FAMILY.prepare(device, KERNELS, case.torch_dtype)
        K, s = case.K, case.s

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return fn(q, k, v, K, s)

        return run

    return factory


# The family's source closure plus this binding: an edit of either changes these impls' hashes.
SOURCES = {d: FAMILY.sources(d, ("sapa_kernels",)) for d in ("cuda", "cpu")}

CORE_FNS: dict[str, Callable[..., Tensor]] = {
    "cupy": core_kernel,
    "cupy-fused": core_kernel_fused,
    "cpu-kernel": core_kernel,
    "cpu-kernel-fused": core_kernel_fused,
}

IMPLS: tuple[Impl, ...] = (
    Impl("cupy", _factory(core_kernel, "cuda"), "CuPy CUDA kernels: sim, torch softmax, atn; gather backward",
         devices=("cuda",), available=kb.available, supports=_supports, sources=SOURCES["cuda"]),
    Impl("cupy-fused", _factory(core_kernel_fused, "cuda"), "one CuPy CUDA kernel sim→softmax→atn, no K² map",
         devices=("cuda",), backward=False, available=kb.available, supports=_supports,
         sources=SOURCES["cuda"]),
    Impl("cpu-kernel", _factory(core_kernel, "cpu"), "the CUDA source compiled for the CPU (g++, OpenMP)",
         devices=("cpu",), available=kb.available, supports=_supports, sources=SOURCES["cpu"]),
    Impl("cpu-kernel-fused", _factory(core_kernel_fused, "cpu"), "fused kernel compiled for the CPU, no K² map",
         devices=("cpu",), backward=False, available=kb.available, supports=_supports,
         sources=SOURCES["cpu"]),
)
