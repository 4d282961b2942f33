"""The CUDA path without a GPU: imports, reasons, the NVRTC compile CuPy would do, and the selfcheck CLI."""

from __future__ import annotations

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
        _cuda.function("sapa", "sapa_sim_f32", 0, GPU_DEFINES)


def test_cupy_reason_is_remembered():
    why = _optional.reason("cupy")
    assert why is None or "pip install 'upbench[cuda]'" in why


def test_source_is_self_contained():
    src = _cuda.source("sapa")
    assert '#include "' not in src  # local headers inlined: NVRTC gets no include path, CuPy's cache key sees all
    assert src.count("namespace upb {") >= 2 and "UPB_SAPA_ENTRIES(bf16, upb::bf16)" in src


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
    prog = nvrtc.createProgram(_cuda.source("sapa"), "sapa.cu", [], [])
    try:
        # CuPy appends -ftz=true after the caller's options: compile exactly what it would
        nvrtc.compileProgram(prog, (*_cuda.nvrtc_options(GPU_DEFINES), f"--gpu-architecture={arch}", "-ftz=true"))
    except Exception as exc:
        pytest.fail(f"NVRTC: {exc}\n{nvrtc.getProgramLog(prog)[:4000]}")
    ptx = nvrtc.getPTX(prog).decode()
    for kernel in ("sim", "atn", "atn_t", "fused"):
        for suffix in ("f64", "f32", "f16", "bf16"):
            assert f".entry sapa_{kernel}_{suffix}(" in ptx


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_selfcheck_cuda_fails_clearly(capsys):
    assert selfcheck.main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("upbench selfcheck: error: --device cuda: the kernels cannot run here: needs a CUDA device")


def test_selfcheck_cpu_quick(capsys):
    assert selfcheck.main(["--device", "cpu", "--quick", "--dtypes", "float32,bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "checks passed on cpu" in out and "FAIL" not in out
    assert "cpu-kernel-fused" in out and "error:" not in out
