"""Check SAPA's kernels on this machine: ``python -m upbench.selfcheck --device cuda`` (or ``cpu``).

Checks every kernel impl against the float64 references — each op (sim, atn, atn_t, fused) forward on
border-heavy, odd and non-square shapes with NaN-poisoned outputs, forward + backward of the core op, in
each dtype — then gradcheck in float64, fused against unfused, determinism of the backward gather, and
prints latency (median; CUDA events after warm-up, or perf_counter on the CPU) and peak extra memory for
unfold, lean, torch.compile(lean) and the two kernel impls at B=2, C=d=256, 64²→128², K=5, fp32 and fp16.
CARAFE's reassembly kernels are checked too (forward and backward against reassemble_reference).
``--device cuda`` uses the CuPy build (upbench._cuda), ``--device cpu`` the shim build (cpu-kernel).
Exit status: 0 all checks passed, 1 a check failed, 2 the device cannot run the kernels here.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import _cpu_shim, _cuda
from .memory import peak
from .timing import Stopping, time_fn

# (B, H, W, d, C, K, s): border-heavy (H or W ≤ K), odd, non-square, C not a multiple of 32, K up to 11
SHAPES = [(1, 3, 4, 5, 7, 3, 2), (2, 5, 3, 33, 70, 5, 3), (1, 2, 2, 8, 9, 7, 1), (1, 6, 5, 16, 130, 3, 4),
          (1, 4, 4, 3, 3, 11, 2), (1, 7, 6, 40, 37, 1, 2), (2, 9, 8, 32, 300, 5, 2)]
BENCH = (2, 64, 64, 256, 256, 5, 2)
QUICK_BENCH = (1, 16, 16, 32, 32, 5, 2)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
# max |kernel − reference| / max |reference| (see tests/test_kernels_shim.py)
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}


@dataclass
class Result:
    name: str
    ok: bool
    detail: str = ""


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    if not torch.isfinite(got).all():
        return float("inf")
    big = ref.abs().max().item()
    return (got.double().cpu() - ref).abs().max().item() / (big or 1.0)


def _inputs(shape, dtype, device, seed=0):
    B, H, W, D, C, K, s = shape
    g = torch.Generator().manual_seed(seed)
    ts = [torch.randn(B, H * s, W * s, D, generator=g, dtype=torch.float64) * D ** -0.5,
          torch.randn(B, H, W, D, generator=g, dtype=torch.float64),
          torch.randn(B, H, W, C, generator=g, dtype=torch.float64),
          torch.randn(B, H * s, W * s, C, generator=g, dtype=torch.float64),
          torch.randn(B, H * s, W * s, K * K, generator=g, dtype=torch.float64).softmax(-1)]
    ts = [t.to(dtype) for t in ts]
    return [t.to(device) for t in ts], [t.double() for t in ts]


def check_ops(device: str, dtype: torch.dtype) -> list[Result]:
    from .operators import sapa_kernels as sk
    from .operators.sapa_core import core_reference

    out = []
    for shape in SHAPES:
        B, H, W, D, C, K, s = shape
        (q, k, v, g, A), (q64, k64, v64, g64, A64) = _inputs(shape, dtype, device)

        def nan(*size):
            return torch.full(size, float("nan"), dtype=dtype, device=device)

        errs = {
            "sim": _rel_err(sk.sim_into(q, k, nan(B, H * s, W * s, K * K), K, s), sk.sim_reference(q64, k64, K, s)),
            "atn": _rel_err(sk.atn_into(A, v, nan(B, H * s, W * s, C), K, s), sk.atn_reference(A64, v64, K, s)),
            "atn_t": _rel_err(sk.atn_t_into(A, g, nan(B, H, W, C), K, s), sk.atn_t_reference(A64, g64, K, s)),
            "fused": _rel_err(sk.fused_into(q, k, v, nan(B, H * s, W * s, C), K, s),
                              core_reference(q64, k64, v64, K, s)),
        }
        for op, e in errs.items():
            out.append(Result(f"{op} {shape} {dtype}", e <= TOL[dtype], f"rel err {e:.2e} (tol {TOL[dtype]:g})"))
    return out


def check_autograd(device: str, dtype: torch.dtype) -> list[Result]:
    from .operators import sapa_kernels as sk
    from .operators.sapa_core import core_reference

    out = []
    for shape in SHAPES[:4]:
        K, s = shape[5:]
        (q, k, v, _, _), (q64, k64, v64, _, _) = _inputs(shape, dtype, device, seed=1)
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        y = sk.core_kernel(q, k, v, K, s)
        gy = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        grads = torch.autograd.grad(y, (q, k, v), gy.to(dtype).to(device))
        q64, k64, v64 = (t.requires_grad_() for t in (q64, k64, v64))
        y64 = core_reference(q64, k64, v64, K, s)
        ref = torch.autograd.grad(y64, (q64, k64, v64), gy.to(dtype).double())
        errs = [_rel_err(y, y64.detach())] + [_rel_err(a, b) for a, b in zip(grads, ref, strict=True)]
        worst = max(errs)
        out.append(Result(f"core fwd+bwd {shape} {dtype}", worst <= GRAD_TOL[dtype],
                          "rel err out/dq/dk/dv " + " ".join(f"{e:.1e}" for e in errs)))
    return out


def check_carafe(device: str, dtype: torch.dtype) -> list[Result]:
    """CARAFE's reassembly kernels (reassemble_kernel), forward and backward, against reassemble_reference."""
    from .operators.carafe_kernels import reassemble_kernel
    from .operators.reassembly import reassemble_reference

    out = []
    for B, C, H, W, K, s, G in [(1, 8, 3, 4, 3, 2, 1), (2, 12, 5, 3, 5, 3, 3), (1, 130, 4, 5, 5, 2, 2)]:
        g = torch.Generator().manual_seed(4)
        x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64).to(dtype)
        M = torch.randn(B, G * K * K, H * s, W * s, generator=g, dtype=torch.float64).softmax(1).to(dtype)
        dy = torch.randn(B, C, H * s, W * s, generator=g, dtype=torch.float64).to(dtype)
        xd, Md = (t.to(device).requires_grad_() for t in (x, M))
        y = reassemble_kernel(xd, Md, K, s, G)
        grads = torch.autograd.grad(y, (xd, Md), dy.to(device))
        x64, M64 = (t.double().requires_grad_() for t in (x, M))
        y64 = reassemble_reference(x64, M64, K, s, G)
        ref = torch.autograd.grad(y64, (x64, M64), dy.double())
        errs = [_rel_err(y, y64.detach())] + [_rel_err(a, b) for a, b in zip(grads, ref, strict=True)]
        out.append(Result(f"carafe fwd+bwd {(B, C, H, W, K, s, G)} {dtype}", max(errs) <= TOL[dtype],
                          "rel err out/dx/dM " + " ".join(f"{e:.1e}" for e in errs)))
    return out


def check_misc(device: str) -> list[Result]:
    from .operators import sapa_kernels as sk

    out = []
    shape = (1, 3, 4, 5, 6, 3, 2)
    (q, k, v, g, A), _ = _inputs(shape, torch.float64, device)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    try:
        ok = torch.autograd.gradcheck(lambda q, k, v: sk.core_kernel(q, k, v, 3, 2), (q, k, v))
        out.append(Result("gradcheck float64 core (sim, softmax, atn)", bool(ok)))
    except Exception as exc:  # gradcheck raises with the mismatch
        out.append(Result("gradcheck float64 core (sim, softmax, atn)", False, str(exc).splitlines()[0]))
    for dtype in (torch.float32, torch.float16):
        (q, k, v, g, A), _ = _inputs(SHAPES[-1], dtype, device, seed=3)
        K, s = SHAPES[-1][5:]
        with torch.no_grad():
            e = _rel_err(sk.core_kernel_fused(q, k, v, K, s), sk.core_kernel(q, k, v, K, s).double().cpu())
        out.append(Result(f"fused vs unfused forward {dtype}", e <= 4 * TOL[dtype], f"rel diff {e:.2e}"))
        B, H, W, D, C = SHAPES[-1][:5]
        runs = [sk.atn_t_into(A, g, torch.empty(B, H, W, C, dtype=dtype, device=device), K, s) for _ in range(3)]
        out.append(Result(f"backward gather deterministic {dtype}", all(torch.equal(runs[0], r) for r in runs)))
    return out


def check_measurement(device: str) -> list[Result]:
    """The measurer measured (issue 5): timing against a known duration, the L2 flush, and that the
    allocator statistics see the kernels' memory. CPU: a calibrated spin and the profiler peak."""
    from .memory import peak_cpu, peak_cuda
    from .operators import sapa_kernels as sk
    from .timing import time_cpu, time_cuda

    out = []
    if device == "cuda":
        # A sleep kernel of known length: CUDA events against the wall clock around a synchronised call.
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(20):
            torch.cuda._sleep(2_000_000)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / 20
        ev = time_cuda(lambda: torch.cuda._sleep(2_000_000), Stopping(budget_s=1.0, min_samples=10),).median
        out.append(Result("CUDA events agree with the wall clock (sleep kernel)", abs(ev / wall - 1) < 0.05,
                          f"events {ev * 1e3:.3f} ms, wall {wall * 1e3:.3f} ms"))
        # A read that fits in L2 is slower cold (flushed) than warm.
        l2 = torch.cuda.get_device_properties(0).L2_cache_size
        x = torch.randn(max(l2 // 16, 1 << 20), device="cuda")
        cold = time_cuda(lambda: x.sum(), Stopping(budget_s=1.0, min_samples=20)).median
        warm = time_cuda(lambda: x.sum(), Stopping(budget_s=1.0, min_samples=20, cold=False)).median
        out.append(Result("L2 flush makes an L2-resident read slower", cold > warm * 1.05,
                          f"cold {cold * 1e6:.1f} µs, warm {warm * 1e6:.1f} µs"))
        # The kernel's output is allocated by torch: the allocator peak sees at least the output.
        (q, k, v, _, _), _ = _inputs(QUICK_BENCH, torch.float32, device)
        K, s = QUICK_BENCH[5:]
        with torch.no_grad():
            pk = peak_cuda(lambda: sk.core_kernel_fused(q, k, v, K, s))
        need = q.shape[0] * q.shape[1] * q.shape[2] * v.shape[-1] * 4
        out.append(Result("torch's allocator counts the CuPy kernel's output", need <= pk <= 1.1 * need,
                          f"peak {pk} B, output {need} B"))
    else:
        def spin() -> None:
            end = time.perf_counter() + 2e-3
            while time.perf_counter() < end:
                pass
        med = time_cpu(spin, Stopping(budget_s=0.5, min_samples=7)).median
        out.append(Result("a 2 ms spin is timed within 3 %", abs(med / 2e-3 - 1) < 0.03, f"{med * 1e3:.3f} ms"))
        pk = peak_cpu(lambda: torch.empty(1000, 1000))
        out.append(Result("profiler peak of a 4 MB allocation is exact", pk == 4_000_000, f"{pk} B"))
    return out


# -- timing and memory --------------------------------------------------------------------------------
def _impls(device: str, quick: bool) -> dict[str, Callable]:
    from .operators import sapa_kernels as sk
    from .operators.sapa_core import core_lean, core_unfold

    kernel = "cupy" if device == "cuda" else "cpu-kernel"
    impls = {"unfold": core_unfold, "lean": core_lean}
    if not quick:
        impls["compile(lean)"] = torch.compile(core_lean)
    impls[kernel] = sk.core_kernel
    impls[kernel + "-fused"] = sk.core_kernel_fused
    return impls


def _fused_into(*args):
    from .operators.sapa_kernels import fused_into

    return fused_into(*args)


def timing_table(device: str, quick: bool, dtypes: list[torch.dtype]) -> list[str]:
    B, H, W, D, C, K, s = QUICK_BENCH if quick else BENCH
    rows = [f"B={B} C={C} d={D} {H}x{W}->{H * s}x{W * s} K={K}, {device}, forward, threads={torch.get_num_threads()}",
            f"{'impl':<24} {'dtype':<9} {'median ms':>10} {'min ms':>9} {'extra peak MiB':>15} {'× output':>9}"]
    st = Stopping(budget_s=0.5 if quick else 2.0, min_samples=3, max_samples=50)
    for dtype in dtypes:
        (q, k, v, _, _), _ = _inputs((B, H, W, D, C, K, s), dtype, device)
        out_bytes = B * H * s * W * s * C * q.element_size()
        impls = _impls(device, quick)
        # The fused kernel into a preallocated output: kernel time without the allocation's page faults.
        prealloc = torch.empty(B, H * s, W * s, C, dtype=dtype, device=device)
        impls[f"{list(impls)[-1]} (out=)"] = lambda q, k, v, K, s: _fused_into(q, k, v, prealloc, K, s)
        for name, fn in impls.items():
            call = lambda fn=fn: fn(q, k, v, K, s)  # noqa: E731
            try:
                with torch.no_grad():
                    call()  # compile / warm up outside the measurements
                    lat = time_fn(call, device, st)
                    mem = peak(call, device)
                rows.append(f"{name:<24} {str(dtype)[6:]:<9} {lat.median * 1e3:>10.2f} {lat.min * 1e3:>9.2f} "
                            f"{mem / 2**20:>15.1f} {mem / out_bytes:>9.2f}")
            except Exception as exc:  # a failing cell is reported, the table goes on
                rows.append(f"{name:<24} {str(dtype)[6:]:<9} error: {type(exc).__name__}: {str(exc)[:80]}")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m upbench.selfcheck", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--quick", action="store_true", help="small timing case, no torch.compile (for tests)")
    p.add_argument("--no-timing", action="store_true", help="checks only")
    p.add_argument("--dtypes", default="float32,float16,bfloat16,float64",
                   help="dtypes for the agreement checks (comma-separated)")
    p.add_argument("--timing-dtypes", default="float32,float16")
    args = p.parse_args(argv)
    try:
        dtypes = [DTYPES[d] for d in args.dtypes.split(",")]
        tdtypes = [DTYPES[d] for d in args.timing_dtypes.split(",")]
    except KeyError as exc:
        print(f"upbench selfcheck: error: --dtypes: unknown dtype {exc}; use {', '.join(DTYPES)}", file=sys.stderr)
        return 2
    why = _cuda.unavailable_reason() if args.device == "cuda" else _cpu_shim.unavailable_reason()
    if why:
        print(f"upbench selfcheck: error: --device {args.device}: the kernels cannot run here: {why}",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    results: list[Result] = []
    for dtype in dtypes:
        results += check_ops(args.device, dtype)
        results += check_autograd(args.device, dtype)
        results += check_carafe(args.device, dtype)
    results += check_misc(args.device)
    results += check_measurement(args.device)
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"FAIL {r.name}: {r.detail}")
    print(f"{len(results) - len(failed)}/{len(results)} checks passed on {args.device} "
          f"({time.perf_counter() - t0:.1f} s)")
    if not args.no_timing:
        for row in timing_table(args.device, args.quick, tdtypes):
            print(row)
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
