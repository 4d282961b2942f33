"""The general window-attention kernels (kernels/window_attn.cu) as torch custom ops.

A window is a list of low-res offsets (du, dv) from a high-res pixel's parent plus a border rule
(:class:`Window`); a K×K window with dilation δ is ``Window.square(K, δ)``. Tensors are channels-last with G
groups (heads) side by side in each row: q (B, sH, sW, G·D), k (B, H, W, G·D), v (B, H, W, G·C), weights and
logits (B, sH, sW, G·M). Ops (namespace ``upbench``; the window as a flat offset list and a border code):

  ``window_attn_sim(q, k, offs, border, s, G, scale)``     S = scale · <q, k(slot)>  (0: zero-rule slot off the map)
  ``window_attn_atn(A, v, offs, border, s, G)``            out = Σ_m A_m · v(slot m)
  ``window_attn_atn_t(A, g, offs, border, s, G)``          atn's transpose as a gather (backward; no atomics)
  ``window_attn_fused(q, k, v, offs, border, s, G, scale)`` atn(softmax(sim)) without the M-map; forward only
  ``window_attn_fused_given(L, v, offs, border, s, G)``    atn(softmax(L)) for given logits; its backward
                                                            recomputes softmax(L) and runs sim and atn_t

sim, atn and fused_given carry autograd formulas built from the same ops; every op has a fake impl and a FLOP
formula. SAPA (sapa_kernels.py) and CARAFE/FADE (carafe_kernels.py) launch these entries with a K×K window and
the zero rule, behind their own ops and argument checks.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from upbench import _cpu_shim
from upbench.cases import Case
from upbench.plugin import Impl

from . import kernel_binding as kb

FAMILY = kb.Family("window_attn")
MAX_SLOTS = kb.MAX_K * kb.MAX_K  # the fused kernel's per-warp scratch (UPB_MAX_KK)
BORDERS = {"zero": 0, "clamp": 1, "shift": 2}


@dataclass(frozen=True)
class Window:
    """Slot offsets (du, dv) from the parent and the border rule: ``zero`` (off-map slots are zero rows;
    computed logits are 0 there), ``clamp`` (replicate padding) or ``shift`` (the window moves inwards to fit)."""

    offsets: tuple[tuple[int, int], ...]
    border: str = "zero"

    @staticmethod
    def square(K: int, dilation: int = 1, border: str = "zero") -> Window:
        r = (K - 1) // 2
        return Window(tuple((dilation * (a - r), dilation * (b - r)) for a in range(K) for b in range(K)), border)

    @property
    def flat(self) -> list[int]:
        return [c for o in self.offsets for c in o]

    @property
    def code(self) -> int:
        return BORDERS[self.border]


def check_window(op: str, offs: Sequence[int], border: int, s: int, G: int, H: int | None = None,
                 W: int | None = None) -> int:
    """Validate a flat offset list, border code, scale and groups (and, for ``shift``, the map); returns M."""
    if len(offs) % 2 or not 1 <= len(offs) // 2 <= MAX_SLOTS or not all(isinstance(o, int) for o in offs):
        raise ValueError(f"upbench::{op}: the window needs 1 to {MAX_SLOTS} integer (du, dv) offsets "
                         f"(got a flat list of {len(offs)})")
    if border not in BORDERS.values():
        raise ValueError(f"upbench::{op}: border={border!r}; use one of {BORDERS}")
    for name, val in (("s", s), ("G", G)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"upbench::{op}: {name}={val!r}; must be a positive integer")
    if border == BORDERS["shift"] and H is not None and W is not None:
        eu = max(offs[0::2]) - min(offs[0::2]) + 1
        ev = max(offs[1::2]) - min(offs[1::2]) + 1
        if eu > H or ev > W:
            raise ValueError(f"upbench::{op}: the shift border rule needs the window ({eu}×{ev}) to fit the "
                             f"low-res map ({H}×{W})")
    return len(offs) // 2


@lru_cache(maxsize=64)
def _offsets(offs: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.tensor(offs, dtype=torch.int64, device=device)


def offsets_tensor(offs: Sequence[int], device: torch.device) -> Tensor:
    """The flat offset list as the kernels read it (int64 on ``device``, cached): for bindings that launch the
    family's entries with their own argument checks (SAPA's, CARAFE's)."""
    return _offsets(tuple(offs), device)


def scale_bits(scale: float) -> int:
    """``scale`` as the kernels take it (the bits of a float64)."""
    return _scale_bits(scale)


def _scale_bits(scale: float) -> int:
    if not (isinstance(scale, (int, float)) and 0 < scale < float("inf")):
        raise ValueError(f"upbench::window_attn: scale={scale!r}; must be a positive finite number")
    return struct.unpack("<q", struct.pack("<d", float(scale)))[0]


def _split(op: str, name: str, t: Tensor, G: int) -> int:
    if t.shape[3] % G:
        raise ValueError(f"upbench::{op}: {name} has {t.shape[3]} channels, not a multiple of G={G}")
    return t.shape[3] // G


def _check_hi(op: str, name: str, t: Tensor, lo: Tensor, s: int, width: int) -> None:
    B, H, W = lo.shape[:3]
    kb.check_shape(op, name, t, (B, H * s, W * s, width))


# -- the *_into entries write into caller-provided outputs (tests poison them); everything is checked first --
def sim_into(q: Tensor, k: Tensor, S: Tensor, offs: Sequence[int], border: int, s: int, G: int,
             scale: float = 1.0) -> Tensor:
    op = "window_attn_sim"
    kb.check_tensors(op, {"q": q, "k": k, "S": S}, contiguous=True)
    B, H, W, _ = k.shape
    M = check_window(op, offs, border, s, G, H, W)
    D = _split(op, "k", k, G)
    _check_hi(op, "q", q, k, s, G * D)
    _check_hi(op, "S", S, k, s, G * M)
    kb.check_grid_y(op, G)
    FAMILY.launch("sim", B * H * W, q, k, S, _offsets(tuple(offs), q.device), B, H, W, D, M, s, G, border,
                  _scale_bits(scale), grid_y=G)
    return S


def atn_into(A: Tensor, v: Tensor, out: Tensor, offs: Sequence[int], border: int, s: int, G: int) -> Tensor:
    op = "window_attn_atn"
    kb.check_tensors(op, {"A": A, "v": v, "out": out}, contiguous=True)
    B, H, W, _ = v.shape
    M = check_window(op, offs, border, s, G, H, W)
    C = _split(op, "v", v, G)
    _check_hi(op, "A", A, v, s, G * M)
    _check_hi(op, "out", out, v, s, G * C)
    FAMILY.launch("atn", B * H * W, A, v, out, _offsets(tuple(offs), v.device), B, H, W, C, M, s, G, border,
                  grid_y=G)
    return out


def atn_t_into(A: Tensor, g: Tensor, out: Tensor, offs: Sequence[int], border: int, s: int, G: int) -> Tensor:
    op = "window_attn_atn_t"
    kb.check_tensors(op, {"A": A, "g": g, "out": out}, contiguous=True)
    B, H, W, _ = out.shape
    M = check_window(op, offs, border, s, G, H, W)
    C = _split(op, "out", out, G)
    _check_hi(op, "A", A, out, s, G * M)
    _check_hi(op, "g", g, out, s, G * C)
    items, gy = kb.atn_t_grid(g, B * H * W, C, G)
    FAMILY.launch("atn_t", items, A, g, out, _offsets(tuple(offs), g.device), B, H, W, C, M, s, G, border,
                  grid_y=gy)
    return out


def fused_into(q: Tensor, k: Tensor, v: Tensor, out: Tensor, offs: Sequence[int], border: int, s: int, G: int,
               scale: float = 1.0, *, path: str | None = None, tile: tuple[int, ...] | None = None,
               blocks: int | None = None) -> Tensor:
    """The fused forward into ``out``. ``path``: ``auto`` (the default, or ``$UPBENCH_WA_FUSED``: the tiled kernel
    on CUDA when its plan fits, else the warp kernel), ``tiled`` or ``warp`` to force one; ``tile`` (TU, TV) or
    (TU, TV, NCB) and ``blocks`` (a smaller grid, so blocks loop over tiles) pin the tiled kernel's plan (tests)."""
    op = "window_attn_fused"
    kb.check_tensors(op, {"q": q, "k": k, "v": v, "out": out}, contiguous=True)
    B, H, W, _ = k.shape
    M = check_window(op, offs, border, s, G, H, W)
    D, C = _split(op, "k", k, G), _split(op, "v", v, G)
    kb.check_shape(op, "v", v, (B, H, W, G * C))
    _check_hi(op, "q", q, k, s, G * D)
    _check_hi(op, "out", out, k, s, G * C)
    kb.check_grid_y(op, G)
    offt = _offsets(tuple(offs), q.device)
    plan = _tiled_plan(op, path, offs, s, G, B, H, W, q, tile)
    if plan is None:
        FAMILY.launch("fused", B * H * W, q, k, v, out, offt, B, H, W, D, C, M, s, G, border, _scale_bits(scale),
                      grid_y=G)
    else:
        FAMILY.launch(_tiled_entry("tiled", q, k, v, out), _tiled_items(plan, blocks, q), q, k, v, out, offt, B, H,
                      W, D, C, M, s, G, border, _scale_bits(scale), plan.TU, plan.TV, plan.NCB, grid_y=G)
    return out


def fused_given_into(L: Tensor, v: Tensor, out: Tensor, offs: Sequence[int], border: int, s: int, G: int, *,
                     path: str | None = None, tile: tuple[int, ...] | None = None,
                     blocks: int | None = None) -> Tensor:
    """The fused forward for given logits into ``out``; ``path``, ``tile``, ``blocks`` as for :func:`fused_into`."""
    op = "window_attn_fused_given"
    kb.check_tensors(op, {"L": L, "v": v, "out": out}, contiguous=True)
    B, H, W, _ = v.shape
    M = check_window(op, offs, border, s, G, H, W)
    C = _split(op, "v", v, G)
    _check_hi(op, "L", L, v, s, G * M)
    _check_hi(op, "out", out, v, s, G * C)
    kb.check_grid_y(op, G)
    offt = _offsets(tuple(offs), v.device)
    plan = _tiled_plan(op, path, offs, s, G, B, H, W, v, tile)
    if plan is None:
        FAMILY.launch("fused_given", B * H * W, L, v, out, offt, B, H, W, C, M, s, G, border, grid_y=G)
    else:
        FAMILY.launch(_tiled_entry("tiled_given", L, v, out), _tiled_items(plan, blocks, v), L, v, out, offt, B, H,
                      W, C, M, s, G, border, plan.TU, plan.TV, plan.NCB, grid_y=G)
    return out


# -- the tiled fused forward (kernels/window_tiled.cuh): its shared-memory plan and when it runs ------------------
PATHS = ("auto", "tiled", "warp")


@lru_cache(maxsize=1)
def tiled_constants() -> tuple[int, int, int]:
    """(pool bytes, slice bytes, children per thread): UPB_TILE_POOL, UPB_TILE_SLICE_BYTES and UPB_TILE_NCH, read
    from the header (one truth)."""
    text = (_cpu_shim.kernel_dir() / "window_tiled.cuh").read_text()
    pool = re.search(r"#define UPB_TILE_POOL \((\d+) \* 1024\)", text)
    sl = re.search(r"#define UPB_TILE_SLICE_BYTES (\d+)", text)
    nch = re.search(r"#define UPB_TILE_NCH (\d+)", text)
    assert pool and sl and nch, "window_tiled.cuh: UPB_TILE_POOL / UPB_TILE_SLICE_BYTES / UPB_TILE_NCH not found"
    return int(pool.group(1)) * 1024, int(sl.group(1)), int(nch.group(1))


def tiled_slice(esize: int) -> tuple[int, int]:
    """(channels per slice, bytes per staged halo row) for an element size: Slice<T> in window_tiled.cuh."""
    sl = tiled_constants()[1] // (16 if esize == 8 else 4)
    return sl, sl * esize + 16


@dataclass(frozen=True)
class TilePlan:
    """A block's tile: TU×TV parents, NCB child slots per pass (groups of NCH children of one parent); the halo
    box, passes per tile, tiles, pool bytes."""

    TU: int
    TV: int
    NCB: int
    EU: int
    EV: int
    passes: int
    tiles: int
    smem: int


def _align16(n: int) -> int:
    return (n + 15) & ~15


@lru_cache(maxsize=256)
def tile_plan(offs: tuple[int, ...], s: int, B: int, H: int, W: int, esize: int, min_tiles: int = 1,
              tile: tuple[int, ...] | None = None) -> TilePlan | None:
    """The tiled kernel's plan, or None when no tile fits the shared pool (a window whose extent's halo box is
    larger than the pool: the warp kernel runs). Among tiles up to 16×16 that fit, it minimises the halo rows
    staged per parent (box rows × passes / parents), preferring plans with at least ``min_tiles`` tiles (enough
    blocks to fill the GPU); ``tile`` pins (TU, TV) or (TU, TV, NCB)."""
    pool, _, nch = tiled_constants()
    _, row = tiled_slice(esize)
    acc = 8 if esize == 8 else 4
    M = len(offs) // 2
    eu = max(offs[0::2]) - min(offs[0::2])
    ev = max(offs[1::2]) - min(offs[1::2])
    gpp = -(-s * s // nch)  # child groups per parent
    cands = [tile[:2]] if tile else [(tu, tv) for tu in range(1, min(H, 16) + 1) for tv in range(1, min(W, 16) + 1)]
    best, best_key = None, None
    for tu, tv in cands:
        P, EU, EV = tu * tv, tu + eu, tv + ev
        fixed = _align16(P * M * 4) + EU * EV * row
        ng = min(P * gpp, (pool - fixed - 15) // (M * acc * nch)) if pool - fixed > 15 else 0
        if tile and len(tile) == 3:
            ng = min(ng, max(1, tile[2] // nch))
        if ng < 1:
            continue
        passes = -(-P * gpp // ng)
        tiles = B * -(-H // tu) * -(-W // tv)
        key = (tiles < min_tiles, -tiles if tiles < min_tiles else 0, EU * EV * passes / P, -P)
        if best_key is None or key < best_key:
            smem = _align16(P * M * 4) + _align16(ng * nch * M * acc) + EU * EV * row
            best, best_key = TilePlan(tu, tv, ng * nch, EU, EV, passes, tiles, smem), key
    return best


def _path(path: str | None) -> str:
    path = path or os.environ.get("UPBENCH_WA_FUSED", "auto")
    if path not in PATHS:
        raise ValueError(f"upbench::window_attn: path={path!r}; use one of {PATHS}")
    return path


def tiled_unavailable(device_type: str) -> str | None:
    """None when the build that runs ``device_type`` here has the tiled kernel, else why not."""
    if dict(kb.defines_for(device_type))["UPB_LANES"] == 32:
        return None
    return ("the tiled kernel is a GPU design built for 32-lane warps; this CPU shim variant "
            f"({_cpu_shim.current_variant()}) runs one-lane warps (use simt, weak, race or asan-simt)")


def fused_path(t: Tensor, offs: Sequence[int], s: int, G: int, B: int, H: int, W: int, path: str | None = None,
               tile: tuple[int, ...] | None = None) -> tuple[TilePlan | None, str]:
    """Which fused kernel a call on ``t``'s device runs: (the tiled kernel's plan, or None for the warp kernel;
    why, in words)."""
    path = _path(path)
    if path == "warp":
        return None, "warp kernel: forced (path='warp')"
    if path == "auto" and t.device.type != "cuda":
        return None, "warp kernel: the CPU's path (the tiled kernel is a GPU design)"
    why = tiled_unavailable(t.device.type)
    if why is None and tile is not None and not (isinstance(tile, tuple) and len(tile) in (2, 3)
                                                 and all(isinstance(x, int) and x >= 1 for x in tile)):
        why = f"tile={tile!r}; must be (TU, TV) or (TU, TV, NCB), positive integers"
    min_tiles = 1
    if t.device.type == "cuda":  # four blocks per SM (the pool allows four on H100), spread over the G groups
        min_tiles = -(-4 * torch.cuda.get_device_properties(t.device).multi_processor_count // G)
    plan = None if why else tile_plan(tuple(offs), s, B, H, W, t.element_size(), min_tiles, tile)
    if plan is None and why is None:
        why = f"no tile's halo box fits the {tiled_constants()[0]} B shared pool"
    if plan is not None:
        return plan, f"tiled kernel: {plan.TU}×{plan.TV} parents, {plan.passes} pass(es), {plan.tiles} tiles"
    return None, f"warp kernel: {why}"


def _tiled_plan(op: str, path: str | None, offs: Sequence[int], s: int, G: int, B: int, H: int, W: int,
                t: Tensor, tile: tuple[int, ...] | None) -> TilePlan | None:
    """The plan when the tiled kernel runs this call, None for the warp kernel; forcing an impossible tiled
    call raises."""
    plan, why = fused_path(t, offs, s, G, B, H, W, path, tile)
    if plan is None and _path(path) == "tiled":
        raise ValueError(f"upbench::{op}: path='tiled': {why.removeprefix('warp kernel: ')}")
    return plan


def _tiled_entry(kernel: str, *ts: Tensor) -> str:
    """The 32-bit index entry when every tensor has fewer than 2^31 elements."""
    return f"{kernel}_i32" if all(t.numel() < 2**31 for t in ts) else kernel


def _tiled_items(plan: TilePlan, blocks: int | None, t: Tensor) -> int:
    """Warp items for Family.launch: one block (UPB_WARPS warps) per tile, or ``blocks`` blocks looping over them."""
    n = plan.tiles if blocks is None else max(1, min(int(blocks), plan.tiles))
    return n * dict(kb.defines_for(t.device.type))["UPB_WARPS"]


# -- custom ops ----------------------------------------------------------------------------------------------
def _hi(lo: Tensor, s: int, width: int) -> Tensor:
    B, H, W, _ = lo.shape
    return lo.new_empty(B, H * s, W * s, width)


@torch.library.custom_op("upbench::window_attn_sim", mutates_args=())
def window_attn_sim(q: Tensor, k: Tensor, offs: list[int], border: int, s: int, G: int, scale: float) -> Tensor:
    check_window("window_attn_sim", offs, border, s, G)  # before allocating by them
    q, k = q.contiguous(), k.contiguous()
    return sim_into(q, k, _hi(k, s, G * (len(offs) // 2)), offs, border, s, G, scale)


@torch.library.custom_op("upbench::window_attn_atn", mutates_args=())
def window_attn_atn(A: Tensor, v: Tensor, offs: list[int], border: int, s: int, G: int) -> Tensor:
    check_window("window_attn_atn", offs, border, s, G)  # before allocating by them
    A, v = A.contiguous(), v.contiguous()
    return atn_into(A, v, _hi(v, s, v.shape[3]), offs, border, s, G)


@torch.library.custom_op("upbench::window_attn_atn_t", mutates_args=())
def window_attn_atn_t(A: Tensor, g: Tensor, offs: list[int], border: int, s: int, G: int) -> Tensor:
    check_window("window_attn_atn_t", offs, border, s, G)
    B, OH, OW, C = g.shape
    if OH % s or OW % s:
        raise ValueError(f"upbench::window_attn_atn_t: high-res size {OH}x{OW} is not a multiple of s={s}")
    A, g = A.contiguous(), g.contiguous()
    return atn_t_into(A, g, g.new_empty(B, OH // s, OW // s, C), offs, border, s, G)


@torch.library.custom_op("upbench::window_attn_fused", mutates_args=())
def window_attn_fused(q: Tensor, k: Tensor, v: Tensor, offs: list[int], border: int, s: int, G: int,
                      scale: float) -> Tensor:
    check_window("window_attn_fused", offs, border, s, G)  # before allocating by them
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return fused_into(q, k, v, _hi(v, s, v.shape[3]), offs, border, s, G, scale)


@torch.library.custom_op("upbench::window_attn_fused_given", mutates_args=())
def window_attn_fused_given(L: Tensor, v: Tensor, offs: list[int], border: int, s: int, G: int) -> Tensor:
    check_window("window_attn_fused_given", offs, border, s, G)  # before allocating by them
    L, v = L.contiguous(), v.contiguous()
    return fused_given_into(L, v, _hi(v, s, v.shape[3]), offs, border, s, G)


@window_attn_sim.register_fake
def _(q, k, offs, border, s, G, scale):
    return _hi(k, s, G * (len(offs) // 2))


@window_attn_atn.register_fake
def _(A, v, offs, border, s, G):
    return _hi(v, s, v.shape[3])


@window_attn_atn_t.register_fake
def _(A, g, offs, border, s, G):
    B, OH, OW, C = g.shape
    return g.new_empty(B, OH // s, OW // s, C)


@window_attn_fused.register_fake
def _(q, k, v, offs, border, s, G, scale):
    return _hi(v, s, v.shape[3])


@window_attn_fused_given.register_fake
def _(L, v, offs, border, s, G):
    return _hi(v, s, v.shape[3])


def _setup_sim(ctx, inputs, output) -> None:
    q, k, ctx.offs, ctx.border, ctx.s, ctx.G, ctx.scale = inputs
    ctx.save_for_backward(q, k)


def _sim_backward(ctx, dS: Tensor):
    q, k = ctx.saved_tensors
    dS = (dS * ctx.scale).contiguous()
    w = (ctx.offs, ctx.border, ctx.s, ctx.G)
    dq = window_attn_atn(dS, k, *w) if ctx.needs_input_grad[0] else None
    dk = window_attn_atn_t(dS, q, *w) if ctx.needs_input_grad[1] else None
    return dq, dk, None, None, None, None, None


def _setup_atn(ctx, inputs, output) -> None:
    A, v, ctx.offs, ctx.border, ctx.s, ctx.G = inputs
    ctx.save_for_backward(A, v)


def _atn_backward(ctx, dout: Tensor):
    A, v = ctx.saved_tensors
    dout = dout.contiguous()
    w = (ctx.offs, ctx.border, ctx.s, ctx.G)
    dA = window_attn_sim(dout, v, *w, 1.0) if ctx.needs_input_grad[0] else None  # 0 off the map, as A's use
    dv = window_attn_atn_t(A, dout, *w) if ctx.needs_input_grad[1] else None
    return dA, dv, None, None, None, None


def _setup_fused_given(ctx, inputs, output) -> None:
    L, v, ctx.offs, ctx.border, ctx.s, ctx.G = inputs
    ctx.save_for_backward(L, v)


def _fused_given_backward(ctx, dout: Tensor):
    """Recomputes the weights A = softmax(L) (the forward kept none), then the unfused chain's gathers:
    dv = atn_t(A, dout), dL = A ⊙ (dA − Σ_m A·dA) with dA = sim(dout, v). Deterministic, no atomics."""
    L, v = ctx.saved_tensors
    B, OH, OW, _ = L.shape
    w = (ctx.offs, ctx.border, ctx.s, ctx.G)
    A = L.reshape(B, OH, OW, ctx.G, -1).softmax(-1)
    dout = dout.contiguous()
    dL = dv = None
    if ctx.needs_input_grad[0]:
        dA = window_attn_sim(dout, v, *w, 1.0).view(A.shape)  # 0 off the map, as A's use
        dL = (A * (dA - (A * dA).sum(-1, keepdim=True))).view(L.shape)
    if ctx.needs_input_grad[1]:
        dv = window_attn_atn_t(A.view(L.shape), dout, *w)
    return dL, dv, None, None, None, None


window_attn_sim.register_autograd(_sim_backward, setup_context=_setup_sim)
window_attn_atn.register_autograd(_atn_backward, setup_context=_setup_atn)
window_attn_fused_given.register_autograd(_fused_given_backward, setup_context=_setup_fused_given)


# -- FLOPs (2 × MACs; every slot counted, off-map ones included) ------------------------------------------------
@register_flop_formula(torch.ops.upbench.window_attn_sim)
def _sim_flop(q_shape, k_shape, offs, *_, **__) -> int:
    B, OH, OW, GD = q_shape
    return 2 * B * OH * OW * (len(offs) // 2) * GD


@register_flop_formula(torch.ops.upbench.window_attn_atn)
def _atn_flop(A_shape, v_shape, offs, *_, **__) -> int:
    B, OH, OW, _ = A_shape
    return 2 * B * OH * OW * (len(offs) // 2) * v_shape[3]


@register_flop_formula(torch.ops.upbench.window_attn_atn_t)
def _atn_t_flop(A_shape, g_shape, offs, *_, **__) -> int:
    B, OH, OW, GC = g_shape
    return 2 * B * OH * OW * (len(offs) // 2) * GC


@register_flop_formula(torch.ops.upbench.window_attn_fused)
def _fused_flop(q_shape, k_shape, v_shape, offs, *_, **__) -> int:
    B, OH, OW, GD = q_shape
    return 2 * B * OH * OW * (len(offs) // 2) * (GD + v_shape[3])


@register_flop_formula(torch.ops.upbench.window_attn_fused_given)
def _fused_given_flop(L_shape, v_shape, offs, *_, **__) -> int:
    B, OH, OW, _ = L_shape
    return 2 * B * OH * OW * (len(offs) // 2) * v_shape[3]


# -- the composed ops --------------------------------------------------------------------------------------------
def attention(q: Tensor, k: Tensor, v: Tensor, win: Window, s: int, G: int = 1, scale: float = 1.0,
              fused: bool = False) -> Tensor:
    """softmax_m(scale · q·k(slot m)) weighted sum of v(slot m), per group; differentiable unless ``fused``."""
    if fused:
        return window_attn_fused(q, k, v, win.flat, win.code, s, G, scale)
    S = window_attn_sim(q, k, win.flat, win.code, s, G, scale)
    B, OH, OW, _ = S.shape
    A = S.view(B, OH, OW, G, -1).softmax(-1).view(B, OH, OW, -1)
    return window_attn_atn(A, v, win.flat, win.code, s, G)


def attention_given(L: Tensor, v: Tensor, win: Window, s: int, G: int = 1, fused: bool = False) -> Tensor:
    """softmax over the slots of the given logits L, weighted sum of v(slot m); differentiable (fused: the
    backward recomputes the softmax)."""
    if fused:
        return window_attn_fused_given(L, v, win.flat, win.code, s, G)
    B, OH, OW, _ = L.shape
    A = L.reshape(B, OH, OW, G, -1).softmax(-1).view(B, OH, OW, -1)
    return window_attn_atn(A, v, win.flat, win.code, s, G)


# -- float64 reference: the window taken literally, an index gather per slot ------------------------------------
def slot_index(win: Window, H: int, W: int, s: int, m: int) -> tuple[Tensor, Tensor, Tensor]:
    """Slot m's low-res row index (sH, 1) and column index (1, sW), clamped onto the map, and its on-map mask."""
    du, dv = win.offsets[m]

    def axis(n: int, d: int, lo: int, hi: int) -> tuple[Tensor, Tensor]:
        p = torch.arange(n * s) // s
        if win.border == "zero":
            x = p + d
        elif win.border == "clamp":
            x = (p + d).clamp(0, n - 1)
        else:  # shift: the window [p + lo, p + hi] moved inwards to fit [0, n)
            x = p.clamp(-lo, n - 1 - hi) + d
        ok = (x >= 0) & (x < n)
        return x.clamp(0, n - 1), ok

    us, vs = [o[0] for o in win.offsets], [o[1] for o in win.offsets]
    u, oku = axis(H, du, min(us), max(us))
    w, okv = axis(W, dv, min(vs), max(vs))
    return u[:, None], w[None, :], oku[:, None] & okv[None, :]


def sim_reference(q: Tensor, k: Tensor, win: Window, s: int, G: int = 1, scale: float = 1.0) -> Tensor:
    """float64 scale · <q_g, k_g(slot m)> as (B, sH, sW, G·M); 0 for a zero-rule slot off the map."""
    B, H, W, _ = k.shape
    qg, kg = q.reshape(B, H * s, W * s, G, -1), k.reshape(B, H, W, G, -1)
    S = torch.stack([(qg * kg[:, u, w]).sum(-1) * ok[None, :, :, None] * scale
                     for u, w, ok in (slot_index(win, H, W, s, m) for m in range(len(win.offsets)))], -1)
    return S.reshape(B, H * s, W * s, -1)


def atn_reference(A: Tensor, v: Tensor, win: Window, s: int, G: int = 1) -> Tensor:
    """float64 Σ_m A[g·M + m] · v_g(slot m); a zero-rule slot off the map has a zero row."""
    B, H, W, GC = v.shape
    M = len(win.offsets)
    Ag, vg = A.reshape(B, H * s, W * s, G, M), v.reshape(B, H, W, G, GC // G)
    out = sum(Ag[..., m:m + 1] * vg[:, u, w] * ok[None, :, :, None, None]
              for m, (u, w, ok) in enumerate(slot_index(win, H, W, s, m) for m in range(M)))
    return out.reshape(B, H * s, W * s, GC)


def atn_t_reference(A: Tensor, g: Tensor, win: Window, s: int, G: int = 1) -> Tensor:
    """The gradient of <atn_reference(A, v), g> with respect to v: what atn_t computes."""
    B, OH, OW, C = g.shape
    v = torch.zeros(B, OH // s, OW // s, C, dtype=g.dtype, requires_grad=True)
    with torch.enable_grad():
        (dv,) = torch.autograd.grad(atn_reference(A, v, win, s, G), v, g)
    return dv


def reference(q: Tensor | None, k: Tensor | None, v: Tensor, win: Window, s: int, G: int = 1, scale: float = 1.0,
              L: Tensor | None = None) -> Tensor:
    """float64 window attention, the logits computed from q, k or given as L (B, sH, sW, G·M); a zero-rule
    slot off the map has computed logit 0 and a zero value row."""
    S = sim_reference(q, k, win, s, G, scale) if L is None else L
    B, OH, OW, _ = S.shape
    A = S.reshape(B, OH, OW, G, -1).softmax(-1).reshape(B, OH, OW, -1)
    return atn_reference(A, v, win, s, G)


# -- impls: the four kernel impls of an operator, declared once -------------------------------------------------
KERNELS = ("sim", "atn", "atn_t", "fused", "fused_given")


def kernel_impls(make_run: Callable[[Case, Any, bool], Callable[..., Tensor]], what: str,
                 supports: Callable[[Case], str | None] = lambda case: None) -> tuple[Impl, ...]:
    """``cupy``, ``cupy-fused``, ``cpu-kernel``, ``cpu-kernel-fused`` for an operator whose
    ``make_run(case, module, fused)`` returns its run function on these kernels (unfused: sim/softmax/atn with
    the gather backward; fused: forward only, no M-map). Sources: this family's files, for provenance."""

    def factory(device: str, fused: bool):
        def build(case: Case, module: Any) -> Callable[..., Tensor]:
            FAMILY.prepare(device, KERNELS, case.torch_dtype)
            return make_run(case, module, fused)
        return build

    out = []
    for name, device in (("cupy", "cuda"), ("cpu-kernel", "cpu")):
        where = "CuPy CUDA" if device == "cuda" else "the CUDA source compiled for the CPU (g++, OpenMP):"
        out.append(Impl(name, factory(device, False), f"{where} window_attn sim, softmax, atn; {what}; gather "
                        "backward", devices=(device,), available=kb.available, supports=supports,
                        sources=FAMILY.sources(device)))
        out.append(Impl(f"{name}-fused", factory(device, True), f"{where} one fused window_attn kernel; {what}; "
                        "no weight map in memory", devices=(device,), backward=False, available=kb.available,
                        supports=supports, sources=FAMILY.sources(device)))
    return tuple(out)


def channels_last(t: Tensor) -> Tensor:
    """(B, C, H, W) → (B, H, W, C) view (a copy happens in the op only when t is not channels_last)."""
    return t.permute(0, 2, 3, 1)


def nchw(t: Tensor) -> Tensor:
    """(B, H, W, C) → (B, C, H, W) view in channels_last memory format: no copy."""
    return t.permute(0, 3, 1, 2)


# -- band windows (kernels/window_band.cuh): a window per output row and column, keys outside it masked -----------
@dataclass(frozen=True, eq=False)
class Band:
    """Output (i, j) sees low-res rows [row_lo[i], row_hi[i]) × columns [col_lo[j], col_hi[j]); every other key
    is masked (excluded from the softmax), not a zero-logit slot as under the ``zero`` rule (AnyUp's window).

    The s² children of a parent share the union of their bands: a Ku×Kv slot grid at the union's corner, slot
    m = a·Kv + b; ``table`` is the kernels' int64 layout (window_band.cuh), ``row_bias`` (sH, Ku) and
    ``col_bias`` (sW, Kv) are 0 on a child's band and −inf off it (the unfused chain adds them to the logits)."""

    H: int
    W: int
    s: int
    Ku: int
    Kv: int
    table: Tensor
    row_bias: Tensor
    col_bias: Tensor

    @property
    def M(self) -> int:
        return self.Ku * self.Kv

    @staticmethod
    def from_ranges(row_lo: Tensor, row_hi: Tensor, col_lo: Tensor, col_hi: Tensor, H: int, W: int,
                    s: int) -> Band:
        """From each output row's and column's [lo, hi) (lengths sH and sW); every range non-empty and on the
        map, and the union starts of consecutive parents never decreasing (what the gather inversion needs)."""
        (U0, Ku, RA, UR, rb), (V0, Kv, CA, VR, cb) = _band_axis(row_lo, row_hi, H, s, "row"), \
            _band_axis(col_lo, col_hi, W, s, "column")
        grid = torch.tensor([(a, b) for a in range(Ku) for b in range(Kv)], dtype=torch.int64).flatten()
        table = torch.cat([grid, U0, V0, RA.flatten(), CA.flatten(), UR.flatten(), VR.flatten()])
        return Band(H, W, s, Ku, Kv, table, rb, cb)

    def table_on(self, device: torch.device) -> Tensor:
        return self.table if device.type == "cpu" else _band_table(self, device)

    def bias(self, like: Tensor) -> Tensor:
        """(sH, sW, Ku·Kv) logit mask, 0 on a child's band and −inf off it, in ``like``'s dtype and device."""
        rb, cb = (t.to(like.device, like.dtype) for t in (self.row_bias, self.col_bias))
        return (rb[:, None, :, None] + cb[None, :, None, :]).reshape(self.H * self.s, self.W * self.s, self.M)


def _band_axis(lo: Tensor, hi: Tensor, n: int, s: int, what: str):
    lo, hi = lo.to(torch.int64).cpu(), hi.to(torch.int64).cpu()
    if lo.shape != (n * s,) or hi.shape != (n * s,):
        raise ValueError(f"band window: {n * s} {what} ranges expected, got {tuple(lo.shape)}, {tuple(hi.shape)}")
    if not ((lo >= 0) & (lo < hi) & (hi <= n)).all():
        raise ValueError(f"band window: every {what} range must be non-empty and inside [0, {n})")
    start, end = lo.view(n, s).amin(1), hi.view(n, s).amax(1)  # each parent's union
    if (start.diff() < 0).any():
        raise ValueError(f"band window: the {what} unions' starts decrease; the gather inversion needs them "
                         "non-decreasing")
    K = int((end - start).max())
    rel = torch.stack([lo, hi], 1) - start.repeat_interleave(s)[:, None]  # (n·s, 2), relative to the union
    t = torch.arange(n)
    ranges = torch.stack([torch.searchsorted(start, t), torch.searchsorted(start, t, right=True) - 1], 1)
    a = torch.arange(K)
    bias = torch.zeros(n * s, K, dtype=torch.float64).masked_fill_((a < rel[:, :1]) | (a >= rel[:, 1:]),
                                                                   float("-inf"))
    return start, K, rel, ranges, bias


@lru_cache(maxsize=16)
def _band_table(band: Band, device: torch.device) -> Tensor:
    return band.table.to(device)


def _check_band(op: str, tab: Tensor, lo: Tensor, s: int, G: int, Ku: int, Kv: int) -> int:
    """Validate the table against the low-res map ``lo`` (B, H, W, ·), s, G, Ku, Kv; returns M."""
    for name, val in (("s", s), ("G", G), ("Ku", Ku), ("Kv", Kv)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"upbench::{op}: {name}={val!r}; must be a positive integer")
    if Ku * Kv > MAX_SLOTS:
        raise ValueError(f"upbench::{op}: a {Ku}×{Kv} band grid exceeds the kernels' {MAX_SLOTS} slots")
    H, W = lo.shape[1:3]
    want = 2 * Ku * Kv + 3 * (H + W) + 2 * s * (H + W)
    if not isinstance(tab, Tensor) or tab.dtype != torch.int64 or tab.shape != (want,) or not tab.is_contiguous():
        raise ValueError(f"upbench::{op}: the band table must be a contiguous int64 vector of {want} entries for "
                         f"a {Ku}×{Kv} grid on {H}×{W}, s={s} (Band.table)")
    if tab.device != lo.device:
        raise ValueError(f"upbench::{op}: the band table is on {tab.device}, the tensors on {lo.device}")
    return Ku * Kv


def band_sim_into(q: Tensor, k: Tensor, S: Tensor, tab: Tensor, Ku: int, Kv: int, s: int, G: int,
                  scale: float = 1.0) -> Tensor:
    op = "window_attn_band_sim"
    kb.check_tensors(op, {"q": q, "k": k, "S": S}, contiguous=True)
    B, H, W, _ = k.shape
    M = _check_band(op, tab, k, s, G, Ku, Kv)
    D = _split(op, "k", k, G)
    _check_hi(op, "q", q, k, s, G * D)
    _check_hi(op, "S", S, k, s, G * M)
    kb.check_grid_y(op, G)
    FAMILY.launch("band_sim", B * H * W, q, k, S, tab, B, H, W, D, M, Kv, s, G, _scale_bits(scale), grid_y=G)
    return S


def band_atn_into(A: Tensor, v: Tensor, out: Tensor, tab: Tensor, Ku: int, Kv: int, s: int, G: int) -> Tensor:
    op = "window_attn_band_atn"
    kb.check_tensors(op, {"A": A, "v": v, "out": out}, contiguous=True)
    B, H, W, _ = v.shape
    M = _check_band(op, tab, v, s, G, Ku, Kv)
    C = _split(op, "v", v, G)
    _check_hi(op, "A", A, v, s, G * M)
    _check_hi(op, "out", out, v, s, G * C)
    kb.check_grid_y(op, G)
    FAMILY.launch("band_atn", B * H * W, A, v, out, tab, B, H, W, C, M, Kv, s, G, grid_y=G)
    return out


def band_atn_t_into(A: Tensor, g: Tensor, out: Tensor, tab: Tensor, Ku: int, Kv: int, s: int, G: int) -> Tensor:
    op = "window_attn_band_atn_t"
    kb.check_tensors(op, {"A": A, "g": g, "out": out}, contiguous=True)
    B, H, W, _ = out.shape
    M = _check_band(op, tab, out, s, G, Ku, Kv)
    C = _split(op, "out", out, G)
    _check_hi(op, "A", A, out, s, G * M)
    _check_hi(op, "g", g, out, s, G * C)
    items, gy = kb.atn_t_grid(g, B * H * W, C, G)
    FAMILY.launch("band_atn_t", items, A, g, out, tab, B, H, W, C, M, Kv, s, G, grid_y=gy)
    return out


def band_fused_mean_into(q: Tensor, k: Tensor, v: Tensor, out: Tensor, tab: Tensor, Ku: int, Kv: int, s: int,
                         G: int, scale: float = 1.0) -> Tensor:
    op = "window_attn_band_fused_mean"
    kb.check_tensors(op, {"q": q, "k": k, "v": v, "out": out}, contiguous=True)
    B, H, W, _ = k.shape
    M = _check_band(op, tab, k, s, G, Ku, Kv)
    D, C = _split(op, "k", k, G), v.shape[3]
    kb.check_shape(op, "v", v, (B, H, W, C))
    _check_hi(op, "q", q, k, s, G * D)
    _check_hi(op, "out", out, k, s, C)
    FAMILY.launch("band_fused_mean", B * H * W, q, k, v, out, tab, B, H, W, D, C, M, Kv, s, G,
                  _scale_bits(scale))
    return out


@torch.library.custom_op("upbench::window_attn_band_sim", mutates_args=())
def window_attn_band_sim(q: Tensor, k: Tensor, tab: Tensor, Ku: int, Kv: int, s: int, G: int,
                         scale: float) -> Tensor:
    _check_band("window_attn_band_sim", tab, k, s, G, Ku, Kv)  # before allocating by them
    q, k = q.contiguous(), k.contiguous()
    return band_sim_into(q, k, _hi(k, s, G * Ku * Kv), tab, Ku, Kv, s, G, scale)


@torch.library.custom_op("upbench::window_attn_band_atn", mutates_args=())
def window_attn_band_atn(A: Tensor, v: Tensor, tab: Tensor, Ku: int, Kv: int, s: int, G: int) -> Tensor:
    _check_band("window_attn_band_atn", tab, v, s, G, Ku, Kv)
    A, v = A.contiguous(), v.contiguous()
    return band_atn_into(A, v, _hi(v, s, v.shape[3]), tab, Ku, Kv, s, G)


@torch.library.custom_op("upbench::window_attn_band_atn_t", mutates_args=())
def window_attn_band_atn_t(A: Tensor, g: Tensor, tab: Tensor, Ku: int, Kv: int, s: int, G: int) -> Tensor:
    B, OH, OW, C = g.shape
    if not (isinstance(s, int) and s >= 1 and OH % s == 0 and OW % s == 0):
        raise ValueError(f"upbench::window_attn_band_atn_t: high-res size {OH}x{OW} is not a multiple of s={s}")
    out = g.new_empty(B, OH // s, OW // s, C)
    _check_band("window_attn_band_atn_t", tab, out, s, G, Ku, Kv)
    return band_atn_t_into(A.contiguous(), g.contiguous(), out, tab, Ku, Kv, s, G)


@torch.library.custom_op("upbench::window_attn_band_fused_mean", mutates_args=())
def window_attn_band_fused_mean(q: Tensor, k: Tensor, v: Tensor, tab: Tensor, Ku: int, Kv: int, s: int, G: int,
                                scale: float) -> Tensor:
    _check_band("window_attn_band_fused_mean", tab, k, s, G, Ku, Kv)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return band_fused_mean_into(q, k, v, _hi(v, s, v.shape[3]), tab, Ku, Kv, s, G, scale)


@window_attn_band_sim.register_fake
def _(q, k, tab, Ku, Kv, s, G, scale):
    return _hi(k, s, G * Ku * Kv)


@window_attn_band_atn.register_fake
def _(A, v, tab, Ku, Kv, s, G):
    return _hi(v, s, v.shape[3])


@window_attn_band_atn_t.register_fake
def _(A, g, tab, Ku, Kv, s, G):
    B, OH, OW, C = g.shape
    return g.new_empty(B, OH // s, OW // s, C)


@window_attn_band_fused_mean.register_fake
def _(q, k, v, tab, Ku, Kv, s, G, scale):
    return _hi(v, s, v.shape[3])


def _setup_band_sim(ctx, inputs, output) -> None:
    q, k, tab, *ctx.w, ctx.scale = inputs
    ctx.save_for_backward(q, k, tab)


def _band_sim_backward(ctx, dS: Tensor):
    q, k, tab = ctx.saved_tensors
    dS = (dS * ctx.scale).contiguous()
    dq = window_attn_band_atn(dS, k, tab, *ctx.w) if ctx.needs_input_grad[0] else None
    dk = window_attn_band_atn_t(dS, q, tab, *ctx.w) if ctx.needs_input_grad[1] else None
    return dq, dk, None, None, None, None, None, None


def _setup_band_atn(ctx, inputs, output) -> None:
    A, v, tab, *ctx.w = inputs
    ctx.save_for_backward(A, v, tab)


def _band_atn_backward(ctx, dout: Tensor):
    A, v, tab = ctx.saved_tensors
    dout = dout.contiguous()
    dA = window_attn_band_sim(dout, v, tab, *ctx.w, 1.0) if ctx.needs_input_grad[0] else None
    dv = window_attn_band_atn_t(A, dout, tab, *ctx.w) if ctx.needs_input_grad[1] else None
    return dA, dv, None, None, None, None, None


window_attn_band_sim.register_autograd(_band_sim_backward, setup_context=_setup_band_sim)
window_attn_band_atn.register_autograd(_band_atn_backward, setup_context=_setup_band_atn)


# FLOPs: 2 × MACs over every slot of the grid (masked ones included), as the other window_attn ops count.
@register_flop_formula(torch.ops.upbench.window_attn_band_sim)
def _band_sim_flop(q_shape, k_shape, tab_shape, Ku, Kv, *_, **__) -> int:
    B, OH, OW, GD = q_shape
    return 2 * B * OH * OW * Ku * Kv * GD


@register_flop_formula(torch.ops.upbench.window_attn_band_atn)
def _band_atn_flop(A_shape, v_shape, tab_shape, Ku, Kv, *_, **__) -> int:
    B, OH, OW, _ = A_shape
    return 2 * B * OH * OW * Ku * Kv * v_shape[3]


@register_flop_formula(torch.ops.upbench.window_attn_band_atn_t)
def _band_atn_t_flop(A_shape, g_shape, tab_shape, Ku, Kv, *_, **__) -> int:
    B, OH, OW, GC = g_shape
    return 2 * B * OH * OW * Ku * Kv * GC


@register_flop_formula(torch.ops.upbench.window_attn_band_fused_mean)
def _band_fused_mean_flop(q_shape, k_shape, v_shape, tab_shape, Ku, Kv, *_, **__) -> int:
    B, OH, OW, GD = q_shape
    return 2 * B * OH * OW * Ku * Kv * (GD + v_shape[3])


BAND_KERNELS = ("band_sim", "band_atn", "band_atn_t", "band_fused_mean")


def band_attention_mean(q: Tensor, k: Tensor, v: Tensor, band: Band, G: int, scale: float = 1.0,
                        fused: bool = False) -> Tensor:
    """Σ_m mean over the G heads of softmax_m(scale · q_g·k_g(slot m)) over the band (masked keys excluded) ·
    v(slot m), v's C channels shared by every head: q (B, sH, sW, G·D), k (B, H, W, G·D), v (B, H, W, C) →
    (B, sH, sW, C). Unfused: band_sim, the mask and softmax in torch, the head mean, band_atn with one group
    (differentiable through the family's gather backward); ``fused``: one kernel, forward only."""
    tab, w = band.table_on(q.device), (band.Ku, band.Kv, band.s)
    if fused:
        return window_attn_band_fused_mean(q, k, v, tab, *w, G, scale)
    S = window_attn_band_sim(q, k, tab, *w, G, scale)
    B, OH, OW, _ = S.shape
    logits = S.view(B, OH, OW, G, band.M) + band.bias(S)[:, :, None, :]
    A = logits.softmax(-1).mean(3)
    return window_attn_band_atn(A, v, tab, *w, 1)


def band_reference(q: Tensor, k: Tensor, v: Tensor, row_ok: Tensor, col_ok: Tensor, G: int,
                   scale: float = 1.0) -> Tensor:
    """float64 head-averaged masked attention over every key, the band taken literally: ``row_ok`` (sH, H) and
    ``col_ok`` (sW, W) say which low-res rows and columns output (i, j) sees."""
    B, OH, OW, GD = q.shape
    H, W = k.shape[1:3]
    qh, kh = q.reshape(B, OH * OW, G, -1), k.reshape(B, H * W, G, -1)
    logits = torch.einsum("blgd,bsgd->bgls", qh, kh) * scale
    ok = (row_ok[:, None, :, None] & col_ok[None, :, None, :]).reshape(OH * OW, H * W)
    A = logits.masked_fill(~ok, float("-inf")).softmax(-1).mean(1)
    return torch.einsum("bls,bsc->blc", A, v.reshape(B, H * W, -1)).reshape(B, OH, OW, -1)


def band_grid_index(band: Band) -> tuple[Tensor, Tensor]:
    """Each child row's grid rows (sH, Ku) and column's grid columns (sW, Kv) as low-res indices (may be past
    the map, where every child masks them): what the kernels' slot m = a·Kv + b addresses."""
    n_u, n_v = band.H, band.W
    U0, V0 = band.table[2 * band.M:2 * band.M + n_u], band.table[2 * band.M + n_u:2 * band.M + n_u + n_v]
    rows = U0.repeat_interleave(band.s)[:, None] + torch.arange(band.Ku)
    cols = V0.repeat_interleave(band.s)[:, None] + torch.arange(band.Kv)
    return rows, cols


def band_sim_reference(q: Tensor, k: Tensor, band: Band, G: int, scale: float = 1.0) -> Tensor:
    """float64 scale · <q_g, k_g(slot m)> over the grid (unmasked; 0 past the map) as (B, sH, sW, G·M)."""
    B, H, W, _ = k.shape
    rows, cols = band_grid_index(band)
    ok = (rows < H)[:, None, :, None] & (cols < W)[None, :, None, :]  # (sH, sW, Ku, Kv)
    kg = k[:, rows.clamp(max=H - 1)[:, None, :, None], cols.clamp(max=W - 1)[None, :, None, :]]
    qg = q.reshape(*q.shape[:3], 1, 1, G, -1)
    S = (qg * kg.reshape(*kg.shape[:5], G, -1)).sum(-1) * ok[None, ..., None] * scale  # (B, sH, sW, Ku, Kv, G)
    return S.permute(0, 1, 2, 5, 3, 4).reshape(B, *q.shape[1:3], -1)


def band_atn_reference(A: Tensor, v: Tensor, band: Band, G: int) -> Tensor:
    """float64 Σ_m A[g·M + m] · v_g(slot m) over the grid (a slot past the map has a zero row)."""
    B, H, W, GC = v.shape
    rows, cols = band_grid_index(band)
    ok = (rows < H)[:, None, :, None] & (cols < W)[None, :, None, :]
    vg = v[:, rows.clamp(max=H - 1)[:, None, :, None], cols.clamp(max=W - 1)[None, :, None, :]]
    vg = (vg * ok[None, ..., None]).reshape(*vg.shape[:3], band.M, G, GC // G)  # (B, sH, sW, M, G, C)
    Ag = A.reshape(*A.shape[:3], G, band.M)
    return torch.einsum("bijgm,bijmgc->bijgc", Ag, vg).reshape(B, *A.shape[1:3], GC)


def band_atn_t_reference(A: Tensor, g: Tensor, band: Band, G: int) -> Tensor:
    """The gradient of <band_atn_reference(A, v), g> with respect to v: what band_atn_t computes."""
    B, OH, OW, C = g.shape
    v = torch.zeros(B, OH // band.s, OW // band.s, C, dtype=g.dtype, requires_grad=True)
    with torch.enable_grad():
        (dv,) = torch.autograd.grad(band_atn_reference(A, v, band, G), v, g)
    return dv
