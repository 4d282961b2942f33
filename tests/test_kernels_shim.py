"""SAPA's kernel ops (the window-attention family with a K×K window, kernels/window_attn.cu) run through the
CPU shim, against the float64 references.

Outputs are poisoned with NaN before each kernel so an element it forgets to write shows up. The ``fast``
build (one-lane warps, vectorised) is what cpu-kernel uses; the ``simt`` build runs the CUDA lane logic
(32-lane warps, shuffles, shared-memory scratch, per-lane channel striding) with one OS thread per lane.
"""

from __future__ import annotations

import ctypes
import shutil

import pytest
import torch

from upbench import _cpu_shim
from upbench.operators import sapa_kernels as sk
from upbench.operators.kernel_binding import CPU_DEFINES
from upbench.operators.sapa_core import core_reference

pytestmark = pytest.mark.skipif(_cpu_shim.unavailable_reason() is not None,
                                reason=str(_cpu_shim.unavailable_reason()))

# (B, H, W, D, C, K, s): border-heavy (H or W ≤ K), non-square, odd sizes, C not a multiple of 32, chunk
# tails (fast build chunk = 64 channels), s² children not a multiple of the group size, K = 1 … 11.
SHAPES = [
    (1, 3, 4, 5, 7, 3, 2),
    (2, 5, 3, 33, 70, 5, 3),
    (1, 2, 2, 8, 9, 7, 1),
    (1, 6, 5, 16, 130, 3, 4),
    (1, 4, 4, 3, 3, 11, 2),
    (1, 7, 6, 40, 37, 1, 2),
    (2, 9, 8, 20, 64, 5, 2),
    (1, 5, 7, 31, 100, 7, 2),  # tail of 36 channels: two whole vectors and 4 scalars
]
# SIMT runs a thread per lane: small maps, still border-heavy, K = 11 (121 slots over 4 lane registers),
# s = 3 (group of 2 + remainder), C with full and partial chunks (chunk = 2 × 32 channels there).
SIMT_SHAPES = [SHAPES[0], (1, 2, 3, 33, 70, 5, 3), (1, 2, 2, 3, 3, 11, 2), (1, 2, 3, 4, 66, 5, 2)]
# max |kernel − reference| / max |reference|: fp32 accumulates in fp32; 16-bit inputs are rounded first, so
# the reference sees the same rounded inputs and only the fp32 sums and the output rounding (½ ulp) differ.
# fp32: sums of up to K² = 121 terms (and exp of logits), whose order the ISA's vector width decides: the
# bound n·ε ≈ 121 × 6e-8 ≈ 7e-6 (an AVX2 build measured 2.3e-6 at K = 11; a wrong index is off by O(0.1)).
TOL = {torch.float64: 1e-12, torch.float32: 8e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def _inputs(shape, dtype, seed=0):
    B, H, W, D, C, K, s = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H * s, W * s, D, generator=g, dtype=torch.float64) * D ** -0.5
    k = torch.randn(B, H, W, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, W, C, generator=g, dtype=torch.float64)
    gout = torch.randn(B, H * s, W * s, C, generator=g, dtype=torch.float64)
    A = torch.randn(B, H * s, W * s, K * K, generator=g, dtype=torch.float64).softmax(-1)
    # round to the dtype, then compute the references from exactly those values
    return [t.to(dtype) for t in (q, k, v, gout, A)]


def _nan(*shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype)


def _close(got: torch.Tensor, ref: torch.Tensor, tol: float, what: str) -> None:
    assert torch.isfinite(got).all(), f"{what}: unwritten (NaN) or non-finite elements"
    err = (got.double() - ref).abs().max().item()
    big = ref.abs().max().item()
    assert err <= tol * big, f"{what}: max error {err:.3g} > {tol:g} × max|ref| {big:.3g}"


def _check_all(shape, dtype, tol):
    B, H, W, D, C, K, s = shape
    q, k, v, gout, A = _inputs(shape, dtype)
    q64, k64, v64, g64, A64 = (t.double() for t in (q, k, v, gout, A))
    S = sk.sim_into(q, k, _nan(B, H * s, W * s, K * K, dtype=dtype), K, s)
    _close(S, sk.sim_reference(q64, k64, K, s), tol, f"sim {shape} {dtype}")
    out = sk.atn_into(A, v, _nan(B, H * s, W * s, C, dtype=dtype), K, s)
    _close(out, sk.atn_reference(A64, v64, K, s), tol, f"atn {shape} {dtype}")
    dv = sk.atn_t_into(A, gout, _nan(B, H, W, C, dtype=dtype), K, s)
    _close(dv, sk.atn_t_reference(A64, g64, K, s), tol, f"atn_t {shape} {dtype}")
    fo = sk.fused_into(q, k, v, _nan(B, H * s, W * s, C, dtype=dtype), K, s)
    _close(fo, core_reference(q64, k64, v64, K, s), tol, f"fused {shape} {dtype}")


def test_references_agree_with_core_reference():
    q, k, v, _, _ = _inputs(SHAPES[1], torch.float64)
    K, s = SHAPES[1][5:]
    got = sk.atn_reference(sk.sim_reference(q, k, K, s).softmax(-1), v, K, s)
    assert torch.allclose(got, core_reference(q, k, v, K, s), rtol=0, atol=1e-13)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}W{}D{}C{}K{}s{}".format(*s))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_fast_build_matches_reference(shape, dtype):
    _check_all(shape, dtype, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[3], SHAPES[7]], ids=["K5s3", "K3s4", "K7s2"])
def test_fast_build_16bit(shape, dtype):
    _check_all(shape, dtype, TOL[dtype])


@pytest.mark.parametrize("shape", SIMT_SHAPES, ids=lambda s: "B{}H{}W{}D{}C{}K{}s{}".format(*s))
def test_simt_build_runs_the_cuda_lane_logic(shape):
    with _cpu_shim.use_variant("simt"):
        _check_all(shape, torch.float32, TOL[torch.float32])


def test_simt_build_16bit():
    with _cpu_shim.use_variant("simt"):
        _check_all(SIMT_SHAPES[3], torch.bfloat16, TOL[torch.bfloat16])
        _check_all(SIMT_SHAPES[0], torch.float16, TOL[torch.float16])


TINY = 2.0 ** -126  # the smallest normal fp32: the GPU build (-ftz=true) flushes anything smaller to zero


def _ftz(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t.abs() < TINY, torch.zeros_like(t), t)  # keeps the sign of −0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_16bit_conversions_are_exact(dtype):
    # atn with K=1, s=1 and weight w stores round(w·x) for every 16-bit pattern x, in the GPU's float mode
    # (FTZ; docs/kernels.md): what holds is
    #   fp16: every pattern round-trips (w = 1), subnormals included (they are normal fp32 numbers), and w·x
    #         rounds as torch's float → fp16 (subnormal results, overflow to inf, ties to even);
    #   bf16: normal numbers round-trip and w·x rounds as torch's; bf16 subnormals (|x| < 2^-126) are fp32
    #         subnormals, read as zero (+0 stored), and an fp32 product below 2^-126 is flushed to ±0.
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    x = bits.view(dtype).reshape(1, 1, -1, 1)
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
    for w in (1.0, 1 / 3, 2.0 ** -7, 255.0):
        A = torch.full((1, 1, x.shape[2], 1), w, dtype=dtype)
        got = sk.atn_into(A, x, _nan(*x.shape, dtype=dtype), 1, 1)
        p = A.float() * _ftz(x.float())  # fp16 subnormals are ≥ 2^-24: never flushed
        # the kernel computes fma(w, x, +0): an exact zero product gives +0 (0 + (−0) = +0); a nonzero one
        # below 2^-126 is flushed to a zero of its own sign (FTZ acts on the fused result, on the GPU alike)
        want = torch.where(p == 0, torch.zeros_like(p), torch.where(p.abs() < TINY, p * 0, p)).to(dtype)
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), f"w={w}"


def test_float64_is_not_flushed():
    # The GPU's FTZ is an fp32 mode; the shim turns MXCSR FTZ/DAZ off for float64 entries.
    x = torch.tensor([1e-310, -3e-320, 2.5e-308], dtype=torch.float64).reshape(1, 1, 3, 1)
    got = sk.atn_into(torch.ones(1, 1, 3, 1, dtype=torch.float64), x, _nan(1, 1, 3, 1, dtype=torch.float64), 1, 1)
    assert torch.equal(got, x)


def test_backward_gather_is_deterministic_across_thread_counts():
    shape = SHAPES[6]
    B, H, W, D, C, K, s = shape
    _, _, _, gout, A = _inputs(shape, torch.float32)
    n = torch.get_num_threads()
    try:
        runs = []
        for t in (1, 2, 1):
            torch.set_num_threads(t)
            runs.append(sk.atn_t_into(A, gout, _nan(B, H, W, C, dtype=torch.float32), K, s))
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_build_is_cached(tmp_path, monkeypatch):
    # The cache knows no family: a one-function family beside the shim header builds in a second, where a fresh
    # window_attn build would take a minute (the tests above build the package's simt variant).
    monkeypatch.setenv("UPBENCH_CACHE_DIR", str(tmp_path / "cache"))
    kdir = tmp_path / "kernels"
    kdir.mkdir()
    shutil.copy(_cpu_shim.kernel_dir() / _cpu_shim.SHIM_HEADER, kdir)
    (kdir / "probe.cu").write_text('extern "C" int probe() { return 42; }\n')
    defs = CPU_DEFINES["simt"]
    lib = _cpu_shim.build("probe", "simt", defs, kdir)
    stamp = lib.stat().st_mtime_ns
    assert _cpu_shim.build("probe", "simt", defs, kdir) == lib and lib.stat().st_mtime_ns == stamp
    assert lib.parent.parent == tmp_path / "cache" / "cpu-kernels" and not list(lib.parent.glob("tmp*"))
    assert ctypes.CDLL(str(lib)).probe() == 42
