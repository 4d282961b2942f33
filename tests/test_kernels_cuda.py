"""The CUDA path without a GPU: imports, reasons, the NVRTC compile CuPy would do, and the selfcheck CLI."""

from __future__ import annotations

import re

import pytest
import torch

from upbench import _cuda, _optional, selfcheck
from upbench.operators.kernel_binding import GPU_DEFINES


def test_import_upbench_needs_no_gpu_or_cupy():
    import upbench.operators.sapa_core  # noqa: F401  (registers the custom ops)

    assert hasattr(torch.ops.upbench, "sapa_fused")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_unavailable_reason_and_clear_errors():
    assert _cuda.unavailable_reason() == "needs a CUDA device (torch.cuda.is_available() is False)"
    with pytest.raises(RuntimeError, match="cupy kernels: needs a CUDA device"):
        _cuda.function("window_attn", "window_attn_sim_f32", 0, GPU_DEFINES)


def test_cupy_reason_is_remembered():
    why = _optional.reason("cupy")
    assert why is None or "pip install 'upbench[cuda]'" in why


def test_source_is_self_contained():
    src = _cuda.source("window_attn")
    assert '#include "' not in src  # local headers inlined: NVRTC gets no include path, CuPy's cache key sees all
    assert src.count("namespace upb {") >= 2 and "UPB_WA_ENTRIES(bf16, upb::bf16)" in src


def _nvrtc():
    if _optional.try_cupy() is None:
        return None
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
        return nvrtc
    except Exception:
        return None


@pytest.mark.skipif(_nvrtc() is None, reason="needs cupy with an NVRTC library (pip install 'cuda-toolkit[nvrtc]')")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvrtc_compiles_the_source_as_cupy_would(arch):
    nvrtc = _nvrtc()
    prog = nvrtc.createProgram(_cuda.source("window_attn"), "window_attn.cu", [], [])
    try:
        # CuPy appends -ftz=true after the caller's options: compile exactly what it would
        nvrtc.compileProgram(prog, (*_cuda.nvrtc_options(GPU_DEFINES), f"--gpu-architecture={arch}", "-ftz=true"))
    except Exception as exc:
        pytest.fail(f"NVRTC: {exc}\n{nvrtc.getProgramLog(prog)[:4000]}")
    ptx = nvrtc.getPTX(prog).decode()
    for kernel in ("sim", "atn", "atn_t", "fused", "fused_given"):  # SAPA's, CARAFE's, NAF's and UPLiFT's
        for suffix in ("f64", "f32", "f16", "bf16"):
            assert f".entry window_attn_{kernel}_{suffix}(" in ptx


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_selfcheck_cuda_fails_clearly(capsys):
    assert selfcheck.main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("upbench selfcheck: error: --device cuda: the kernels cannot run here: needs a CUDA device")


def test_selfcheck_cuda_dry_run_runs_all_cpu_logic_and_prints_the_table_last(capsys):
    # The GPU validation script's first run is not on the GPU: every check runs here through the shim, and
    # the checks that need a GPU (sanitizer, side stream + graph, NVML) say SKIP with the reason.
    assert selfcheck.main(["--device", "cuda", "--dry-run", "--dtypes", "float32,bfloat16"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("upbench selfcheck on cuda (dry run"):].splitlines()
    assert re.fullmatch(r"\d+ passed, 0 failed, \d+ skipped", table[-1]), table[-1]
    rows = {line.split("  ")[0].strip(): line for line in table[3:-1]}
    for name in ("quick pass of every kernel (subprocess)", "deterministic sapa_fused", "deterministic carafe_bwd_m",
                 "deterministic carafe_fused",
                 "bf16 subnormal round trip (FTZ: subnormals → +0, normals exact)"):
        assert " PASS " in rows[name], rows.get(name)
    assert any(n.startswith("bench shape") and " PASS " in r for n, r in rows.items())
    assert any(n.startswith("output of") and " PASS " in r for n, r in rows.items())
    assert any(n.startswith("bandwidth sapa_fused") and " PASS " in r for n, r in rows.items())
    for name in ("compute-sanitizer racecheck", "side stream + CUDA graph capture/replay",
                 "NVML: no throttling during the run", "trust checks (timing, poisoning, energy)"):
        assert " SKIP " in rows[name], rows.get(name)


def test_selfcheck_isolates_a_failing_check():
    def boom(ctx):
        raise RuntimeError("launch failed\nsecond line")

    checks = [selfcheck.SelfCheck("first", boom),
              selfcheck.SelfCheck("second", lambda c: [selfcheck.Result("b", True)])]
    ctx = selfcheck.Context(device="cpu", target="cpu")
    rows = selfcheck.run_checks(checks, ctx, log=lambda _: None)
    assert [(r.name, r.ok) for r in rows] == [("first", False), ("b", True)]
    assert rows[0].detail.startswith("RuntimeError: launch failed (at ") and "second line" not in rows[0].detail
    assert selfcheck.table(rows)[-1] == "1 passed, 1 failed, 0 skipped"
