"""The kernels under AddressSanitizer + UBSan, through the CPU shim, in a subprocess with libasan preloaded.

Two builds: ``asan`` (one-lane warps, the vector code) and ``asan-simt`` (32-lane warps, the CUDA lane
logic, and the tiled fused forward). Tiny shapes, border-heavy, every dtype path that differs (fp32, bf16);
the window_attn kernels through SAPA's, CARAFE's (plain and fused) and their own bindings.
The driver ends with a deliberate overflow (an output one channel short) to prove the sanitizer is live.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from upbench import _cpu_shim
from upbench.operators.kernel_binding import CPU_DEFINES

DRIVER = textwrap.dedent("""
    import torch
    from upbench import _cpu_shim
    from upbench.operators import carafe_kernels as ck, sapa_kernels as sk, window_attn_kernels as wk
    torch.manual_seed(0)
    for variant in ("asan", "asan-simt"):
        with _cpu_shim.use_variant(variant):
            for B, H, W, D, C, K, s in [(1, 2, 3, 5, 7, 3, 2), (1, 3, 2, 33, 37, 5, 3), (2, 1, 1, 4, 3, 1, 1)]:
                for dt in (torch.float32, torch.bfloat16):
                    q, k = torch.randn(B, H * s, W * s, D, dtype=dt), torch.randn(B, H, W, D, dtype=dt)
                    v, g = torch.randn(B, H, W, C, dtype=dt), torch.randn(B, H * s, W * s, C, dtype=dt)
                    A = torch.randn(B, H * s, W * s, K * K, dtype=dt)
                    sk.sim_into(q, k, torch.empty(B, H * s, W * s, K * K, dtype=dt), K, s)
                    sk.atn_into(A, v, torch.empty(B, H * s, W * s, C, dtype=dt), K, s)
                    sk.atn_t_into(A, g, torch.empty(B, H, W, C, dtype=dt), K, s)
                    sk.fused_into(q, k, v, torch.empty(B, H * s, W * s, C, dtype=dt), K, s)
            for B, C, H, W, K, s, G in [(1, 6, 2, 3, 3, 2, 2), (1, 35, 3, 2, 5, 3, 1)]:
                x = torch.randn(B, C, H, W, requires_grad=True)
                M = torch.randn(B, G * K * K, H * s, W * s, requires_grad=True)
                ck.reassemble_kernel(x, M, K, s, G).sum().backward()
                ck.reassemble_fused(x, M, K, s, G).sum().backward()
            # window_attn: dilation × K past the map, ratio 16 on 1×1, clamp and shift rules, the CPU packed path
            # (s = 4, two heads); every kernel via autograd
            for win, B, H, W, D, C, s, G in [(wk.Window.square(3, 3), 1, 2, 2, 3, 5, 2, 2),
                                             (wk.Window.square(3, 1, "clamp"), 1, 1, 1, 4, 35, 16, 1),
                                             (wk.Window.square(3, 1, "shift"), 2, 3, 4, 5, 6, 3, 1),
                                             (wk.Window.square(3, 1, "shift"), 1, 3, 3, 5, 11, 4, 2)]:
                for dt in (torch.float32, torch.bfloat16):
                    M = len(win.offsets)
                    q = torch.randn(B, H * s, W * s, G * D, dtype=dt, requires_grad=True)
                    k = torch.randn(B, H, W, G * D, dtype=dt, requires_grad=True)
                    v = torch.randn(B, H, W, G * C, dtype=dt, requires_grad=True)
                    L = torch.randn(B, H * s, W * s, G * M, dtype=dt, requires_grad=True)
                    wk.attention(q, k, v, win, s, G, 0.5).sum().backward()
                    wk.attention_given(L, v, win, s, G).sum().backward()
                    wk.attention(q, k, v, win, s, G, 0.5, fused=True)
                    wk.attention_given(L, v, win, s, G, fused=True)
                    if variant == "asan-simt":  # the tiled kernel (32-lane builds only): its plan, then pinned
                        qd, kd, vd, Ld = (t.detach() for t in (q, k, v, L))
                        for pin in (dict(), dict(tile=(1, 2, 4), blocks=1)):
                            o = torch.empty(B, H * s, W * s, G * C, dtype=dt)
                            wk.fused_into(qd, kd, vd, o, win.flat, win.code, s, G, 0.5, path="tiled", **pin)
                            wk.fused_given_into(Ld, vd, o, win.flat, win.code, s, G, path="tiled", **pin)
            # window_attn band windows (AnyUp's, clipped by the borders; ratio 16 on 1×1): every kernel via autograd
            from upbench.operators.anyup import windows
            for B, H, W, D, C, s, G in [(1, 3, 2, 3, 5, 2, 2), (1, 1, 1, 4, 35, 8, 1)]:  # few: asan-simt is slow
                (r0, r1), (c0, c1) = windows(H * s, H, 0.3), windows(W * s, W, 0.3)
                bd = wk.Band.from_ranges(r0, r1, c0, c1, H, W, s)
                for dt in (torch.float32, torch.bfloat16):
                    q = torch.randn(B, H * s, W * s, G * D, dtype=dt, requires_grad=True)
                    k = torch.randn(B, H, W, G * D, dtype=dt, requires_grad=True)
                    v = torch.randn(B, H, W, C, dtype=dt, requires_grad=True)
                    wk.band_attention_mean(q, k, v, bd, G, 0.5).sum().backward()
                    wk.band_attention_mean(q, k, v, bd, G, 0.5, fused=True)
            # Bad arguments through the *_into entries: one ValueError each, nothing reaches a kernel. (The
            # custom ops raise from inside torch's dispatcher, a C++ throw that ASan's preloaded runtime cannot
            # intercept in this process; their guards are the same checks, run in test_kernels_guards.py.)
            q, k, v = torch.randn(1, 4, 4, 8), torch.randn(1, 2, 2, 8), torch.randn(1, 2, 2, 8)
            g, A17 = torch.randn(1, 4, 4, 8), torch.randn(1, 4, 4, 289)
            calls = [lambda: sk.fused_into(q, k, v, torch.empty(1, 4, 4, 8), 17, 2),
                     lambda: sk.sim_into(q, k, torch.empty(1, 4, 4, 289), 17, 2),
                     lambda: sk.atn_into(A17, v, torch.empty(1, 4, 4, 8), 17, 2),
                     lambda: sk.atn_t_into(A17, g, torch.empty(1, 2, 2, 8), 17, 2),
                     lambda: sk.fused_into(q, k, v, torch.empty(1, 4, 4, 7), 3, 2),
                     lambda: sk.atn_into(torch.randn(1, 4, 4, 9), v, torch.empty(1, 4, 4, 8).double(), 3, 2),
                     lambda: sk.fused_into(q.transpose(1, 2), k, v, torch.empty(1, 4, 4, 8), 3, 2),
                     lambda: wk.fused_into(q, k, v, torch.empty(1, 4, 4, 8), [0, 0] * 226, 0, 2, 1),
                     lambda: wk.atn_t_into(torch.randn(1, 4, 4, 2), g, torch.empty(1, 2, 2, 8), [0, 0, 3, 0], 2, 2, 1),
                     lambda: wk.band_atn_t_into(torch.randn(1, 4, 4, 4), g, torch.empty(1, 2, 2, 8),
                                                torch.zeros(20, dtype=torch.int64), 2, 2, 2, 1)]
            for call in calls:
                try:
                    call()
                    print("guard missed", flush=True)
                except ValueError:
                    pass
    print("clean", flush=True)
    with _cpu_shim.use_variant("asan"):  # the canary, past the guards: must be reported
        v, off = torch.randn(1, 2, 2, 8), wk.offsets_tensor(wk.Window.square(3).flat, torch.device("cpu"))
        sk.FAMILY.launch("atn", 4, torch.randn(1, 4, 4, 9), v, torch.empty(1, 4, 4, 7), off, 1, 2, 2, 8, 9, 2, 1, 0)
    print("canary missed", flush=True)
""")

# A launch that bypasses the bindings with 17² slots: the debug builds' device-side check stops it first.
DEVICE_CHECK = textwrap.dedent("""
    import torch
    from upbench import _cpu_shim
    from upbench.operators import sapa_kernels as sk
    q, k, v = torch.randn(1, 4, 4, 8), torch.randn(1, 2, 2, 8), torch.randn(1, 2, 2, 8)
    off = torch.zeros(2 * 289, dtype=torch.int64)
    with _cpu_shim.use_variant("asan-simt"):
        sk.FAMILY.launch("fused", 4, q, k, v, torch.empty(1, 4, 4, 8), off, 1, 2, 2, 8, 8, 289, 2, 1, 0,
                         sk.ONE)
    print("device check missed", flush=True)
""")


def _skip_reason() -> str | None:
    if _cpu_shim.unavailable_reason():
        return _cpu_shim.unavailable_reason()
    if _cpu_shim.sanitizer_runtime() is None:
        return f"{_cpu_shim.compiler()} has no AddressSanitizer runtime (libasan.so)"
    return None


@pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))
def test_kernels_run_clean_under_asan_and_ubsan():
    # build here, so a compile error shows as itself (outside the subprocess's timeout); side by side: two g++
    with ThreadPoolExecutor(2) as pool:
        for lib in [pool.submit(_cpu_shim.build, "window_attn", v, CPU_DEFINES[v]) for v in ("asan", "asan-simt")]:
            lib.result()
    env = dict(os.environ, LD_PRELOAD=_cpu_shim.sanitizer_runtime() or "",
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    # 900 s: at a load average of 70–170 on 2 cores the driver took 565 s
    res = subprocess.run([sys.executable, "-c", DRIVER], env=env, capture_output=True, text=True, timeout=900)
    assert "clean" in res.stdout, f"sanitizer report before the canary:\n{res.stderr[-6000:]}"
    assert "canary missed" not in res.stdout and res.returncode != 0
    assert "guard missed" not in res.stdout
    assert "heap-buffer-overflow" in res.stderr and "window_attn.cu" in res.stderr
    res = subprocess.run([sys.executable, "-c", DEVICE_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "device check missed" not in res.stdout
    assert "upbench kernel: window slots or border rule out of range" in res.stderr, res.stderr[-3000:]
