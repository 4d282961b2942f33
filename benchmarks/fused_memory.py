"""Extra peak memory of the fused forward kernels at the benchmark sizes, as a multiple of the output's bytes.

    python benchmarks/fused_memory.py

The CPU allocator's exact peak (upbench.memory.peak_cpu) of one fused kernel op call, inputs built beforehand:
``contiguous`` with every input in the channels-last layout the kernel reads; ``x as NCHW`` with the values
passed as the channels-last view of an NCHW tensor, as the operators' kernel impls pass them (the op then makes
one contiguous copy). Prints one JSON line per case; tests/test_memory_fused.py holds the ≤ 1.05× bound.
"""

from __future__ import annotations

import json

import torch

from upbench.memory import peak_cpu, result_bytes
from upbench.operators import sapa_kernels as sk
from upbench.operators import window_attn_kernels as wk
from upbench.operators.anyup import windows


def _nchw_view(t: torch.Tensor) -> torch.Tensor:
    """The same values, as the channels-last view of a contiguous NCHW tensor."""
    return wk.channels_last(t.permute(0, 3, 1, 2).contiguous())


def cases() -> dict[str, tuple]:
    """name → (op, args, index of the value tensor in args)."""
    r = torch.randn
    out = {}
    q, k, v = r(2, 128, 128, 256), r(2, 64, 64, 256), r(2, 64, 64, 256)
    out["sapa core B=2 C=d=256 64²→128² K=5 (sapa_fused)"] = (sk.sapa_fused, (q, k, v, 5, 2), 2)
    win = wk.Window.square(9, 1, "shift")
    q, k, v = r(1, 448, 448, 256), r(1, 28, 28, 256), r(1, 28, 28, 384)
    out["naf 28²→448² C=384 K=9 4 heads (window_attn_fused)"] = (
        torch.ops.upbench.window_attn_fused, (q, k, v, win.flat, win.code, 16, 4, 64 ** -0.5), 2)
    win = wk.Window.square(5)
    L, v = r(1, 128, 128, 25), r(1, 64, 64, 256)
    out["carafe C=256 64²→128² K=5 (window_attn_fused_given)"] = (
        torch.ops.upbench.window_attn_fused_given, (L, v, win.flat, win.code, 2, 1), 1)
    (r0, r1) = windows(448, 28, 0.1)
    bd = wk.Band.from_ranges(r0, r1, r0, r1, 28, 28, 16)
    q, k, v = r(1, 448, 448, 128), r(1, 28, 28, 128), r(1, 28, 28, 384)
    out[f"anyup 28²→448² C=384 qk=128 4 heads, {bd.Ku}×{bd.Kv} band grid (window_attn_band_fused_mean)"] = (
        torch.ops.upbench.window_attn_band_fused_mean, (q, k, v, bd.table, bd.Ku, bd.Kv, 16, 4, 32 ** -0.5), 2)
    return out


def main() -> None:
    with torch.no_grad():
        for name, (op, args, iv) in cases().items():
            out = result_bytes(op(*args))  # warm: the build and cached tables load outside the window
            row = {"case": name, "output_MB": round(out / 1e6, 2)}
            row["contiguous"] = round(peak_cpu(lambda op=op, args=args: op(*args)) / out, 4)
            nchw = list(args)
            nchw[iv] = _nchw_view(args[iv])
            row["x as NCHW"] = round(peak_cpu(lambda op=op, a=tuple(nchw): op(*a)) / out, 4)
            print(json.dumps(row, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
