"""CPU performance of the window_attn kernels against this machine's roofline floor (issue 16's CPU goals).

  1. CARAFE's fused forward (``fused_given``: softmax over given K² logits + reassembly), fp32, B = 2,
     C = 256, 64² → 128², K = 5, zero border, G = 1;
  2. the SAPA core's forward + backward through the autograd path ``attention(...)`` (sim → softmax → atn;
     backward sim/atn/atn_t), fp32, B = 2, C = d = 256, 64² → 128², K = 5, scale 1/√d;
  3. NAF's fused forward at its public size (``--naf``): 28² → 448² (ratio 16), 4 heads of d = 64, C = 384,
     K = 9, shift rule, fp32.

Floor = max(FLOPs / matmul ceiling, minimum bytes / copy ceiling); FLOPs from the kernels' registered
formulas (FlopCounterMode), minimum bytes: goal 1 reads L and v and writes out; goal 2 reads q, k, v and
grad-out and writes dq, dk, dv. Each floor is given twice: with ``upbench.ceilings`` (the kept probe) and
with the best torch.mm GFLOP/s measured here at n = 2048 on the same threads.

This VM's clock is not steady: torch.mm at n = 1024 measured 46–79 GFLOP/s over 20 consecutive calls on an
idle machine. So every kernel call is paired with a matmul (n = 1024) just before it, and the ``paired`` figure is
the median over calls of (kernel time / the floor at that call's matmul rate): kernel and ceiling taken at the
same moment. All three cases' floors are compute floors, so only the matmul ceiling is paired.

Times are medians of ``--reps`` calls, in two forms: ``into`` (preallocated outputs, the kernel alone; goal 2:
glibc kept in its ``warm`` mode so the gradients' pages are reused, see upbench/alloc.py) and ``plain`` (a
plain call: fresh outputs, first-touch page faults included). Usage:

    python benchmarks/window_attn_cpu.py [--reps 7] [--threads N] [--parts] [--naf] [--cpu-time] [--kdir DIR]
                                         [--ab DIR] [--report DIR]

``--kdir`` runs the kernel sources of another directory (a copy of kernels/ at another commit) and
``--ab DIR`` interleaves this tree's kernels (A) with DIR's (B) call by call, for version comparisons on a
shared machine. ``--report DIR`` also writes what was printed, with the machine and the command, to
DIR/README.md (reports/kernels-cpu is the committed one).
"""

from __future__ import annotations

import argparse
import builtins
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from upbench import _cpu_shim
from upbench.alloc import allocation_mode
from upbench.ceilings import ceilings
from upbench.operators import window_attn_kernels as wk

B, C, H, S, K = 2, 256, 64, 2, 5
WIN = wk.Window.square(K)
SCALE = C**-0.5


CLOCK = time.perf_counter  # --cpu-time: time.process_time (with one thread: CPU time, less load-sensitive)


def _t(fn: Callable[[], object]) -> float:
    t0 = CLOCK()
    fn()
    return CLOCK() - t0


def mm_gflops(n: int = 2048, reps: int = 7) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2 * n**3 / min(_t(lambda: a @ b) for _ in range(reps)) / 1e9


def flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def carafe_case() -> dict[str, Callable[[], object] | int]:
    g = torch.Generator().manual_seed(0)
    L = torch.randn(B, H * S, H * S, K * K, generator=g)
    v = torch.randn(B, H, H, C, generator=g)
    out = torch.empty(B, H * S, H * S, C)
    into = lambda: wk.fused_given_into(L, v, out, WIN.flat, WIN.code, S, 1)  # noqa: E731
    plain = lambda: wk.attention_given(L, v, WIN, S, 1, fused=True)  # noqa: E731
    nbytes = (L.numel() + v.numel() + out.numel()) * 4
    return {"into": into, "plain": plain, "flops": flops(plain), "bytes": nbytes}


def sapa_case() -> dict[str, Callable[[], object] | int]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H * S, H * S, C, generator=g).requires_grad_()
    k = torch.randn(B, H, H, C, generator=g).requires_grad_()
    v = torch.randn(B, H, H, C, generator=g).requires_grad_()
    gout = torch.randn(B, H * S, H * S, C, generator=g)

    def step() -> None:
        out = wk.attention(q, k, v, WIN, S, 1, SCALE)
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), gout)
        del dq, dk, dv

    nbytes = sum(t.numel() for t in (q, k, v, gout)) * 4 * 2 - gout.numel() * 4
    return {"into": step, "plain": step, "flops": flops(step), "bytes": nbytes, "warm_alloc": True}


def naf_case() -> dict[str, Callable[[], object] | int]:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 448, 448, 256, generator=g), torch.randn(1, 28, 28, 256, generator=g)
    v, out = torch.randn(1, 28, 28, 384, generator=g), torch.empty(1, 448, 448, 384)
    win = wk.Window.square(9, 1, "shift")
    into = lambda: wk.fused_into(q, k, v, out, win.flat, win.code, 16, 4, 64**-0.5)  # noqa: E731
    plain = lambda: wk.attention(q, k, v, win, 16, 4, 64**-0.5, fused=True)  # noqa: E731
    nbytes = (q.numel() + k.numel() + v.numel() + out.numel()) * 4
    return {"into": into, "plain": plain, "flops": flops(plain), "bytes": nbytes}


def kernel_parts() -> dict[str, tuple[Callable[[], object], int]]:
    """The SAPA fwd+bwd chain's pieces with preallocated outputs: (call, FLOPs)."""
    g = torch.Generator().manual_seed(1)
    hi, lo = (B, H * S, H * S), (B, H, H)
    q, dout = torch.randn(*hi, C, generator=g), torch.randn(*hi, C, generator=g)
    k, v = torch.randn(*lo, C, generator=g), torch.randn(*lo, C, generator=g)
    A = torch.randn(*hi, K * K, generator=g).softmax(-1)
    Sm, out_hi, out_lo = torch.empty(*hi, K * K), torch.empty(*hi, C), torch.empty(*lo, C)
    A5, dA5 = A.view(*hi, 1, K * K), torch.randn(*hi, 1, K * K, generator=g)
    w = (WIN.flat, WIN.code, S, 1)
    mac = B * (H * S) ** 2 * K * K * C
    return {
        "sim(q, k)": (lambda: wk.sim_into(q, k, Sm, *w, SCALE), 2 * mac),
        "atn(A, v)": (lambda: wk.atn_into(A, v, out_hi, *w), 2 * mac),
        "atn_t(A, dout)": (lambda: wk.atn_t_into(A, dout, out_lo, *w), 2 * mac),
        "fused(q, k, v)": (lambda: wk.fused_into(q, k, v, out_hi, *w, SCALE), 4 * mac),
        # as attention() calls them: over a (B, OH, OW, G, M) view (torch took 2.6× longer on the 4-d tensor)
        "torch softmax fwd": (lambda: A5.softmax(-1), 0),
        "torch softmax bwd": (lambda: torch._softmax_backward_data(dA5, A5, -1, A.dtype), 0),
    }


PAIR_N = 1024  # the matmul timed just before each kernel call


def timed(fn: Callable[[], object], dirs: list[tuple[str, Path | None]], warm_alloc: bool,
          reps: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(kernel samples, matmul GFLOP/s just before each) per kernel directory, the directories interleaved call
    by call after one warm-up call each."""
    samples: dict[str, list[float]] = {tag: [] for tag, _ in dirs}
    rates: dict[str, list[float]] = {tag: [] for tag, _ in dirs}
    a, b = torch.randn(PAIR_N, PAIR_N), torch.randn(PAIR_N, PAIR_N)
    with allocation_mode("warm" if warm_alloc else "fresh"):
        for r in range(reps + 1):
            for tag, kdir in dirs:
                mm = _t(lambda: a @ b)
                with _cpu_shim.use_variant("fast", kdir):
                    t = _t(fn)
                if r:
                    samples[tag].append(t)
                    rates[tag].append(2 * PAIR_N**3 / mm / 1e9)
    return samples, rates


def paired_ratio(samples: list[float], rates: list[float], flops: int, nbytes: int, copy_gbps: float) -> float:
    """Median over calls of kernel time / the floor at the matmul rate measured just before that call."""
    floors = (max(flops / (g * 1e9), nbytes / (copy_gbps * 1e9)) for g in rates)
    return statistics.median(t / fl for t, fl in zip(samples, floors, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--kdir", type=Path, default=None, help="kernel sources to run instead of the package's")
    ap.add_argument("--ab", type=Path, default=None, help="interleave with the kernels in this directory")
    ap.add_argument("--parts", action="store_true", help="also time each kernel of the SAPA chain")
    ap.add_argument("--naf", action="store_true", help="also NAF's fused forward at 448² (about 1 s a call)")
    ap.add_argument("--report", type=Path, default=None, help="also write the results to DIR/README.md")
    ap.add_argument("--cpu-time", action="store_true", help="one thread, timed by process CPU time (kernel and "
                    "matmul alike): a per-core comparison that a busy machine disturbs less than wall time")
    args = ap.parse_args()
    lines: list[str] = []

    def print(*parts: object) -> None:  # noqa: A001 - echo and keep for --report
        text = " ".join(str(x) for x in parts)
        lines.append(text)
        builtins.print(text, flush=True)

    global CLOCK
    if args.cpu_time:
        args.threads, CLOCK = 1, time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    ceil = ceilings("cpu", "float32")
    mine = mm_gflops()
    clock = "process CPU time" if args.cpu_time else "wall time"
    print(f"threads {torch.get_num_threads()}, {clock}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"ceilings: upbench.ceilings matmul {ceil['matmul_GFLOPs']:.1f} GFLOP/s, copy {ceil['copy_GBps']:.1f} GB/s "
          f"(probed {ceil.get('probed_at', '?')}); measured torch.mm n=2048: {mine:.1f} GFLOP/s")
    cases = {"CARAFE fused_given fwd (B=2)": carafe_case(), "SAPA core fwd+bwd (B=2)": sapa_case()}
    if args.naf:
        cases["NAF fused fwd (448², ×16, C=384, K=9, 4 heads)"] = naf_case()
    dirs = [("A", args.kdir)] + ([("B", args.ab)] if args.ab else [])
    for name, case in cases.items():
        f, nb = case["flops"], case["bytes"]
        floor_p = max(f / (ceil["matmul_GFLOPs"] * 1e9), nb / (ceil["copy_GBps"] * 1e9))
        floor_m = max(f / (mine * 1e9), nb / (ceil["copy_GBps"] * 1e9))
        print(f"\n{name}: {f / 1e9:.3f} GFLOP, {nb / 1e6:.1f} MB minimum; floor {floor_p * 1e3:.2f} ms (probed "
              f"ceilings), {floor_m * 1e3:.2f} ms (measured mm)")
        for mode in ("into", "plain"):
            warm = bool(case.get("warm_alloc")) and mode == "into"
            samples, rates = timed(case[mode], dirs, warm, args.reps)
            for tag, _ in dirs:
                med = statistics.median(samples[tag])
                label = "into (prealloc/warm)" if mode == "into" else "plain (fresh outputs)"
                paired = paired_ratio(samples[tag], rates[tag], f, nb, ceil["copy_GBps"])
                print(f"  {tag} {label:22s} median {med * 1e3:7.2f} ms  best {min(samples[tag]) * 1e3:7.2f} ms  "
                      f"= {med / floor_p:.2f}× probed floor, {med / floor_m:.2f}× measured-mm floor, "
                      f"{paired:.2f}× paired floor (mm {statistics.median(rates[tag]):.0f} GFLOP/s, "
                      f"{min(rates[tag]):.0f}–{max(rates[tag]):.0f}); {f / med / 1e9:.0f} GFLOP/s")
    if args.parts:
        print("\nparts (preallocated outputs):")
        for name, (fn, f) in kernel_parts().items():
            samples, rates = timed(fn, dirs, False, args.reps)
            for tag, _ in dirs:
                med = statistics.median(samples[tag])
                paired = paired_ratio(samples[tag], rates[tag], f, 0, 1.0) if f else 0.0
                rate = f"  {f / med / 1e9:.0f} GFLOP/s = {paired:.2f}× its paired compute floor" if f else ""
                print(f"  {tag} {name:18s} median {med * 1e3:7.2f} ms{rate}")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.report:
        write_report(args.report, lines)


def write_report(out: Path, lines: list[str]) -> None:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor() or "unknown CPU")
    flags = _cpu_shim.cpu_flags()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    out.mkdir(parents=True, exist_ok=True)
    head = [
        "# window_attn kernels on the CPU: time against the roofline floor",
        "",
        "Generated by `benchmarks/window_attn_cpu.py`; what the cases, floors and columns mean is in its docstring",
        "and in docs/kernels.md (\"CPU performance\"). Compare only figures taken at the same load.",
        "",
        f"- machine: {cpu}, {isa}, {os.cpu_count()} logical CPUs; torch {torch.__version__}, "
        f"Python {platform.python_version()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- command: `python benchmarks/window_attn_cpu.py {' '.join(sys.argv[1:])}`",
        "",
        "```",
    ]
    (out / "README.md").write_text("\n".join(head + lines + ["```", ""]))


if __name__ == "__main__":
    main()
