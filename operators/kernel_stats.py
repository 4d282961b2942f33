"""Resource use of upbench's CUDA kernels, read from ptxas without a GPU.

``compile_stats(path, arch)`` compiles one ``.cu`` file with ``nvcc -cubin -Xptxas -v`` using the CUDA
build's own defines and float mode (kernel_binding.GPU_DEFINES, upbench._cuda.nvcc_options: -ftz=true as
CuPy compiles) and returns, per kernel entry point, its registers, stack frame, spill stores/loads and
shared memory. A spill or a stack frame in a hot kernel means local-memory traffic on the
GPU; the tests fail on either, and reports can show the table.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from upbench._cpu_shim import kernel_dir
from upbench._cuda import nvcc_options

from .kernel_binding import GPU_DEFINES

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def nvcc() -> str | None:
    """Path of nvcc ($UPBENCH_NVCC, PATH, $CUDA_HOME/bin), or None."""
    for cand in (os.environ.get("UPBENCH_NVCC"), shutil.which("nvcc")):
        if cand and Path(cand).exists():
            return cand
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    p = Path(home) / "bin" / "nvcc"
    return str(p) if p.exists() else None


def parse_ptxas(text: str) -> list[dict[str, Any]]:
    """Per-entry statistics from ``ptxas -v`` output (entry points only; device functions are inlined)."""
    stats: dict[str, dict[str, Any]] = {}
    current: str | None = None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            current = m.group(1)
            stats[current] = {"kernel": current, "arch": m.group(2), "registers": 0, "stack_bytes": 0,
                              "spill_stores": 0, "spill_loads": 0, "smem_bytes": 0}
        elif m := _PROPS.search(line):
            current = m.group(1) if m.group(1) in stats else None
        elif current and (m := _FRAME.search(line)):
            s = stats[current]
            s["stack_bytes"], s["spill_stores"], s["spill_loads"] = (int(g) for g in m.groups())
        elif current and (m := _USED.search(line)):
            stats[current]["registers"] = int(m.group(1))
            stats[current]["smem_bytes"] = int(m.group(2) or 0)
    return list(stats.values())


_STATS_CACHE: dict[tuple[str, str, tuple[str, ...], str], list[dict]] = {}


def compile_stats(path: str | os.PathLike[str], arch: str = "sm_90", extra: tuple[str, ...] = ()) -> list[dict]:
    """Compile ``path`` for ``arch`` (e.g. ``sm_80``) and return one dict per kernel entry point.

    Keys: kernel, arch, registers, stack_bytes, spill_stores, spill_loads, smem_bytes. Raises RuntimeError
    with nvcc's message when nvcc is missing or the compile fails. Cached per process by the bytes of the file
    and of the kernel headers (one compile serves several tests).
    """
    h = hashlib.sha256(Path(path).read_bytes())
    for p in sorted(kernel_dir().glob("*.cuh")):
        h.update(p.read_bytes())
    key = (str(path), arch, tuple(extra), h.hexdigest())
    if key not in _STATS_CACHE:
        _STATS_CACHE[key] = _compile_stats(path, arch, extra)
    return [dict(s) for s in _STATS_CACHE[key]]


def _compile_stats(path: str | os.PathLike[str], arch: str, extra: tuple[str, ...]) -> list[dict]:
    exe = nvcc()
    if exe is None:
        raise RuntimeError("nvcc not found (set UPBENCH_NVCC or CUDA_HOME, or put nvcc on PATH)")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [exe, "-cubin", f"-arch={arch}", "-Xptxas", "-v", *nvcc_options(GPU_DEFINES), f"-I{kernel_dir()}", *extra,
               "-o", str(Path(tmp) / "out.cubin"), str(path)]
        res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed ({' '.join(cmd)}):\n{res.stderr[-4000:]}")
    return parse_ptxas(res.stdout + res.stderr)


def family_stats(family: str, arch: str = "sm_90") -> list[dict]:
    """:func:`compile_stats` of ``kernels/<family>.cu``."""
    return compile_stats(kernel_dir() / f"{family}.cu", arch)


def tiled_resources(archs: tuple[str, ...] = ("sm_80", "sm_90")) -> list[dict]:
    """nvcc's registers, stack, spills and shared memory of the tiled fused forward's entries (window_tiled.cuh)."""
    return [s for a in archs for s in compile_stats(kernel_dir() / "window_attn.cu", a) if "_tiled" in s["kernel"]]


# -- modelled memory traffic of the fused forward kernels (no GPU needed) -------------------------------------------
# A per-kernel formula from its loop structure (docs/kernels.md, "Modelled traffic"), in bytes:
#   minimum  q, k, v (or the logits L and v) read once, the output written once;
#   dram     the minimum, when the low-res rows that one row of tiles or warps touches (the window's extent plus one
#            row, every group's k and v channels) fit in L2 (L2_BYTES); the kernels then re-read k and v only from L2.
#            Otherwise k and v once per window row (flagged: not the cases below);
#   l1       global-memory requests the SMs issue (loads and stores through L1/TEX; cp.async counted here too);
#   shared   shared-memory data moved (staging writes, row reads, logit and weight traffic).
L2_BYTES = 40 * 2**20  # A100's L2; H100 has 50 MB
H100_SMS = 132


@dataclass(frozen=True)
class TrafficCase:
    """A fused-forward call: (B, H, W) low-res, ratio s, q·k channels D and value channels C over all G groups."""

    name: str
    B: int
    H: int
    W: int
    s: int
    D: int
    C: int
    G: int
    offsets: tuple[int, ...]  # flat (du, dv) list
    border: str = "zero"
    esize: int = 4
    given: bool = False

    @property
    def M(self) -> int:
        return len(self.offsets) // 2


def _square(K: int) -> tuple[int, ...]:
    r = (K - 1) // 2
    return tuple(c for a in range(K) for b in range(K) for c in (a - r, b - r))


# The benchmark cases of issue 16: SAPA's core and NAF's attention (4 heads of 64, shift rule), fp32.
BENCH_TRAFFIC = (TrafficCase("sapa-core B=2 C=d=256 64²→128² K=5", 2, 64, 64, 2, 256, 256, 1, _square(5)),
                 TrafficCase("naf 28²→448² C=384 K=9 4 heads", 1, 28, 28, 16, 256, 384, 4, _square(9), "shift"))


def minimum_bytes(c: TrafficCase) -> int:
    lo, hi = c.B * c.H * c.W, c.B * c.H * c.W * c.s * c.s
    first = hi * c.G * c.M if c.given else (hi + lo) * c.D
    return c.esize * (first + lo * c.C + hi * c.C)


def _dram(c: TrafficCase) -> tuple[int, bool]:
    ext = max(c.offsets[0::2]) - min(c.offsets[0::2]) + 1
    band = (ext + 1) * c.W * (c.C + (0 if c.given else c.D)) * c.esize  # per batch item, every group
    fits = band <= L2_BYTES
    extra = 0 if fits else ext * c.B * c.H * c.W * (c.C + (0 if c.given else c.D)) * c.esize
    return minimum_bytes(c) + extra, fits


def warp_traffic(c: TrafficCase, nc: int = 2, lanes: int = 32, vpt: int = 8) -> dict[str, Any]:
    """window_attn.cu's fused kernel: a warp per (parent, group), children in groups of ``nc``; each group reads
    its q rows and the M k rows (off-map slots read the centre row), then the M v rows (every slot counted)."""
    Dg, Cg, e = c.D // c.G, c.C // c.G, c.esize
    lo, ss = c.B * c.H * c.W, c.s * c.s
    groups = ss // nc + ss % nc
    per_parent = (0 if c.given else ss * Dg + groups * c.M * Dg) + groups * c.M * Cg  # elements loaded
    per_parent += ss * c.M if c.given else 0
    l1 = e * c.G * lo * (per_parent + ss * Cg)
    chunks = -(-Cg // (lanes * vpt))
    shared = 4 * c.G * lo * ss * c.M * (3 + chunks)  # logits written, max + exp read, weights written, read per chunk
    dram, fits = _dram(c)
    return {"kernel": "fused (warp)", "minimum": minimum_bytes(c), "dram": dram, "l1": l1, "shared": shared,
            "fits_l2": fits}


def tiled_traffic(c: TrafficCase, sms: int = H100_SMS, threads: int = 128) -> dict[str, Any]:
    """window_tiled.cuh's kernel with the plan the binding picks for ``sms`` SMs: per tile and pass, the halo box
    staged once per channel slice (global → shared), each child's q row read by the R threads that split its
    group's slots, the output stored once; shared: the staging writes, one row-slice read per (child group, slot,
    slice) in both phases, the logits' read-modify-write per D slice, the softmax's passes and the weight reads."""
    from .window_attn_kernels import tile_plan, tiled_constants, tiled_slice

    Dg, Cg, e, M = c.D // c.G, c.C // c.G, c.esize, c.M
    plan = tile_plan(c.offsets, c.s, c.B, c.H, c.W, e, -(-4 * sms // c.G))
    if plan is None:
        return {"kernel": "tiled", "plan": None}
    nch = tiled_constants()[2]
    SL, _ = tiled_slice(e)
    ss, lo = c.s * c.s, c.B * c.H * c.W
    hi, groups = lo * ss, lo * -(-ss // nch)  # children; child groups (a masked tail when nch ∤ s²)
    tiles_u, tiles_v = -(-c.H // plan.TU), -(-c.W // plan.TV)
    # halo rows staged: per tile (edge tiles counted at full size: an upper bound) and pass
    box = plan.EU * plan.EV * plan.passes * c.B * tiles_u * tiles_v
    R = max(1, threads // min(plan.NCB // nch, plan.TU * plan.TV * -(-ss // nch)))
    first = hi * M if c.given else hi * Dg * R + box * Dg
    l1 = e * c.G * (first + box * Cg + hi * Cg)
    nd, ncs = (0 if c.given else -(-Dg // SL)), -(-Cg // SL)
    staged = box * (nd + ncs) * SL * e
    rows = groups * M * (nd + ncs) * SL * e
    logits = groups * nch * M * 4 * (2 * nd + 5 + ncs)
    dram, fits = _dram(c)
    return {"kernel": "tiled", "minimum": minimum_bytes(c), "dram": dram, "l1": l1,
            "shared": c.G * (staged + rows + logits), "fits_l2": fits, "plan": plan}


def traffic_table(cases: tuple[TrafficCase, ...] = BENCH_TRAFFIC) -> list[str]:
    """One line per (case, kernel): modelled DRAM, L1 requests and shared bytes beside the minimum, in MB."""
    rows = [f"{'case':<38} {'kernel':<13} {'min MB':>8} {'DRAM MB':>8} {'L1 MB':>8} {'L1/min':>7} {'shared MB':>10}"]
    for c in cases:
        for t in (warp_traffic(c), tiled_traffic(c)):
            if t.get("minimum") is None:
                rows.append(f"{c.name:<38} {t['kernel']:<13} no plan fits: the warp kernel runs")
                continue
            rows.append(f"{c.name:<38} {t['kernel']:<13} {t['minimum'] / 1e6:>8.1f} {t['dram'] / 1e6:>8.1f} "
                        f"{t['l1'] / 1e6:>8.1f} {t['l1'] / t['minimum']:>7.2f} {t['shared'] / 1e6:>10.1f}")
    return rows
