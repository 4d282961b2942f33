"""The reassembly primitive shared by CARAFE, A2U and FADE (DESIGN.md §2), NCHW.

``out[b, c, i, j] = Σ_m M[b, g(c)·K² + m, i, j] · x[b, c, slot m of (i, j)]``: x (B, C, H, W) low-res, M
(B, G·K², sH, sW) high-res kernels, G groups of C/G contiguous channels; slot m = a·K + b of the K×K window
around the parent (i//s, j//s); off-map slots hold zeros (zero padding, no renormalisation).

Three formulations: ``unfold`` (F.unfold + einsum; K² × the low-res tensor), ``lean`` (a loop over the K²
offsets on shifted views, O(output) memory) and ``reassemble_reference`` (an explicit index gather, used in
float64 as the operators' definition). Kernel-backed impls (operators/carafe_kernels.py, on the window-attention
kernel family) are wired in lazily so the package imports without them. The ``-fused`` kernel impls take the
kernels' logits instead (``LogitsFn``) and fuse the softmax over each group's K² into the reassembly; operators
whose kernels are exactly softmax(logits) (CARAFE, FADE) offer them through ``module_impls(fused=True)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from upbench.cases import Case
from upbench.plugin import Impl, Operator

# fn(x, M, K, s, G) -> out
ReassembleFn = Callable[[Tensor, Tensor, int, int, int], Tensor]
# fn(x, L, K, s, G) -> reassembly of x with softmax over each group's K² logits of L
LogitsFn = Callable[[Tensor, Tensor, int, int, int], Tensor]


def reassemble_unfold(x: Tensor, M: Tensor, K: int, s: int, G: int = 1) -> Tensor:
    B, C, H, W = x.shape
    xu = F.unfold(x, K, padding=(K - 1) // 2).view(B, G, C // G, K * K, H, W)
    Mv = M.reshape(B, G, K * K, H, s, W, s)
    out = torch.einsum("bgcmhw,bgmhiwj->bgchiwj", xu, Mv)
    return out.reshape(B, C, H * s, W * s)


def reassemble_lean(x: Tensor, M: Tensor, K: int, s: int, G: int = 1) -> Tensor:
    B, C, H, W = x.shape
    r = (K - 1) // 2
    xp = F.pad(x, (r, r, r, r)).view(B, G, C // G, H + 2 * r, W + 2 * r)
    M7 = M.reshape(B, G, K * K, H, s, W, s)
    out = x.new_zeros(B, G, C // G, H, s, W, s)
    for m in range(K * K):
        a, b = divmod(m, K)
        xm = xp[:, :, :, a:a + H, b:b + W].unsqueeze(4).unsqueeze(6)  # broadcast over the s×s children
        # In place is autograd-safe: addcmul's backward needs only the two factors, never `out`.
        out.addcmul_(M7[:, :, m].unsqueeze(2), xm)
    return out.view(B, C, H * s, W * s)


def reassemble_reference(x: Tensor, M: Tensor, K: int, s: int, G: int = 1) -> Tensor:
    """Explicit gather per slot, written from the definition; independent of both formulations above."""
    B, C, H, W = x.shape
    r = (K - 1) // 2
    pi = torch.arange(H * s) // s
    pj = torch.arange(W * s) // s
    group = torch.arange(C) // (C // G)
    out = torch.zeros(B, C, H * s, W * s, dtype=x.dtype)
    for m in range(K * K):
        u = pi + m // K - r
        v = pj + m % K - r
        ok = (((u >= 0) & (u < H))[:, None] & ((v >= 0) & (v < W))[None, :]).to(x.dtype)
        xm = x[:, :, u.clamp(0, H - 1)][:, :, :, v.clamp(0, W - 1)] * ok
        out += M[:, group * K * K + m] * xm
    return out


def nearest_up(t: Tensor, s: int) -> Tensor:
    """Nearest upsampling of an NCHW tensor as a broadcast view (no copy until consumed)."""
    B, C, H, W = t.shape
    return t[:, :, :, None, :, None].expand(B, C, H, s, W, s).reshape(B, C, H * s, W * s)


def check_positive_ints(op: Operator, case: Case, names: tuple[str, ...]) -> str | None:
    """The message for the first of ``names`` (hyperparameters) that is not a positive integer, or None."""
    params = {**op.defaults(), **case.params}
    for name in names:
        v = params.get(name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            return f"{op.name} needs {name} to be a positive integer (got {name}={v!r})"
    return None


def window_border(case: Case, r: int) -> Tensor:
    """(sH, sW) map of output pixels whose low-res window of radius r reaches past the map."""
    oh, ow = case.out_hw
    pi = torch.arange(oh) // case.s
    pj = torch.arange(ow) // case.s
    return ((pi < r) | (pi >= case.H - r))[:, None] | ((pj < r) | (pj >= case.w - r))[None, :]


# -- kernel-backed impls -----------------------------------------------------------------------------------
_KERNEL_MODULE = "upbench.operators.carafe_kernels"


def _kernel_fn(name: str = "reassemble_kernel") -> tuple[ReassembleFn | None, str | None]:
    try:
        mod = importlib.import_module(_KERNEL_MODULE)
    except ImportError as exc:
        return None, f"{_KERNEL_MODULE} is not importable ({exc})"
    fn = getattr(mod, name, None)
    if fn is None:
        return None, f"{_KERNEL_MODULE} has no {name}"
    return fn, None


def _kernel_available(device: str) -> str | None:
    fn, why = _kernel_fn()
    if fn is None:
        return why
    probe = getattr(importlib.import_module(_KERNEL_MODULE), "available", None)  # optional per-device check
    return probe(device) if callable(probe) else None


def _call_kernel(x: Tensor, M: Tensor, K: int, s: int, G: int = 1) -> Tensor:
    fn, why = _kernel_fn()
    if fn is None:
        raise RuntimeError(why)
    return fn(x, M, K, s, G)


def _call_kernel_fused(x: Tensor, L: Tensor, K: int, s: int, G: int = 1) -> Tensor:
    fn, why = _kernel_fn("reassemble_fused")
    if fn is None:
        raise RuntimeError(why)
    return fn(x, L, K, s, G)


@dataclass(frozen=True)
class ReassemblyImpl:
    """One way to reassemble; operators turn each into an :class:`upbench.plugin.Impl`."""

    name: str
    fn: ReassembleFn
    description: str
    devices: tuple[str, ...] = ("cpu", "cuda")
    available: Callable[[str], str | None] = lambda _: None
    sources: tuple[str, ...] = ()  # the kernel files it runs (Impl.sources: part of its impl_hash)
    fused: bool = False  # fn is a LogitsFn: it takes the logits and applies the softmax itself


def _kernel_sources(device: str) -> tuple[str, ...]:
    try:
        from .kernel_binding import kernel_sources
    except ImportError:  # the package imports without the kernel bindings; nothing to hash then
        return ()
    return kernel_sources("window_attn", device, ("carafe_kernels",))


REASSEMBLY_IMPLS: tuple[ReassemblyImpl, ...] = (
    ReassemblyImpl("unfold", reassemble_unfold, "F.unfold + einsum (K² × the low-res tensor)"),
    ReassemblyImpl("lean", reassemble_lean, "loop over K² shifted views; O(output) memory, autograd"),
    ReassemblyImpl("cupy", _call_kernel, "CUDA kernel (carafe_kernels.reassemble_kernel) via CuPy",
                   ("cuda",), _kernel_available, _kernel_sources("cuda")),
    ReassemblyImpl("cpu-kernel", _call_kernel, "the same CUDA source compiled for the CPU",
                   ("cpu",), _kernel_available, _kernel_sources("cpu")),
    ReassemblyImpl("cupy-fused", _call_kernel_fused, "one CUDA kernel (carafe_kernels.reassemble_fused) via "
                   "CuPy: softmax over K² fused into the reassembly, no kernel map in memory",
                   ("cuda",), _kernel_available, _kernel_sources("cuda"), fused=True),
    ReassemblyImpl("cpu-kernel-fused", _call_kernel_fused, "the fused kernel compiled for the CPU, no kernel map "
                   "in memory", ("cpu",), _kernel_available, _kernel_sources("cpu"), fused=True),
)


def module_impls(fused: bool = False) -> tuple[Impl, ...]:
    """One Impl per reassembly formulation for a module whose forward takes ``reassemble=fn``; with ``fused``
    also the fused kernel impls, for a module whose forward takes ``fused=fn`` (a LogitsFn) instead: one
    whose kernels are exactly the softmax over each group's K² of its logits."""

    def factory_for(ri: ReassemblyImpl):
        def factory(case: Case, module: nn.Module | None) -> Callable[..., Tensor]:
            assert module is not None
            kw = {"fused" if ri.fused else "reassemble": ri.fn}

            def run(*inputs: Tensor) -> Tensor:
                return module(*inputs, **kw)

            return run

        return factory

    return tuple(Impl(ri.name, factory_for(ri), ri.description, devices=ri.devices, available=ri.available,
                      sources=ri.sources) for ri in REASSEMBLY_IMPLS if fused or not ri.fused)
