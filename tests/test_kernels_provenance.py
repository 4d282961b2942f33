"""Provenance: every kernel-backed impl declares its kernels' source closure (kernel_binding.kernel_sources),
so that editing a .cu/.cuh changes exactly the hashes of the impls that compile it.

The hash is ``upbench.provenance.impl_hash``: sha256 over the operator class's source file, the impl
factory's source file, every file in ``impl.sources``, and the impl's name. It is computed in a subprocess
that imports a copy of the package, before and after an edit of one kernel file in that copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from upbench.operators import kernel_binding as kb

ROOT = Path(__file__).resolve().parent.parent

HASHES = textwrap.dedent("""
    import json, sys
    import upbench
    from upbench import registry
    from upbench.provenance import impl_hash  # the harness's own hash, as results record it
    assert upbench.__file__.startswith(sys.argv[1]), upbench.__file__  # the copy, not the checkout

    print(json.dumps({f"{name}/{impl.name}": impl_hash(op, impl)
                      for name, op in registry.operators().items() for impl in op.impls}))
""")

# Every kernel impl runs kernels/window_attn.cu: SAPA's through sapa_kernels.py, the reassembly operators'
# through carafe_kernels.py (A2U without the fused impls: its kernels are not softmax(logits)), NAF's and
# UPLiFT's through window_attn_kernels.py.
SAPA_OPS = ("sapa", "sapa-b", "sapa-g", "sapa-i")
KERNEL_IMPLS = ("cupy", "cupy-fused", "cpu-kernel", "cpu-kernel-fused")
SAPA = {f"{o}/{i}" for o in SAPA_OPS for i in KERNEL_IMPLS}
CARAFE = {f"{o}/{i}" for o in ("carafe", "fade") for i in KERNEL_IMPLS} | {"a2u/cupy", "a2u/cpu-kernel"}
WINDOW = {f"{o}/{i}" for o in ("anyup", "naf", "uplift") for i in KERNEL_IMPLS}
ALL = SAPA | CARAFE | WINDOW


def _hashes(copy: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(copy))
    res = subprocess.run([sys.executable, "-c", HASHES, str(copy)], cwd=copy, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("pkg")
    for d in ("upbench", "operators", "kernels", "suites"):
        shutil.copytree(ROOT / d, copy / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


@pytest.fixture(scope="module")
def unedited(package_copy) -> dict[str, str]:
    """The copy's hashes before any edit (each test restores the file it edits), computed once."""
    return _hashes(package_copy)


def test_kernel_sources_are_the_include_closure_and_bindings():
    names = {Path(p).name for p in kb.kernel_sources("window_attn", "cpu")}
    assert {"window_attn.cu", "window.cuh", "window_band.cuh", "window_tiled.cuh", "upb_common.cuh", "cpu_shim.h",
            "kernel_binding.py", "window_attn_kernels.py", "_cpu_shim.py"} == names
    names = {Path(p).name for p in kb.kernel_sources("window_attn", "cuda", ("carafe_kernels",))}
    assert {"window_attn.cu", "window.cuh", "window_band.cuh", "window_tiled.cuh", "upb_common.cuh",
            "kernel_binding.py", "window_attn_kernels.py",
            "carafe_kernels.py", "_cuda.py"} == names
    assert sorted(p.name for p in kb._cpu_shim.kernel_dir().glob("*.cu")) == ["window_attn.cu"]  # one family


@pytest.mark.parametrize("binding, changed", [
    ("operators/sapa_kernels.py", SAPA),
    ("operators/carafe_kernels.py", CARAFE),
    ("operators/window_attn_kernels.py", ALL),
], ids=lambda v: v if isinstance(v, str) else "")
def test_editing_a_binding_changes_the_hashes_of_the_impls_that_launch_through_it(package_copy, unedited, binding,
                                                                                   changed):
    before = unedited
    path = package_copy / binding
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# an edit\n")
        after = _hashes(package_copy)
    finally:
        path.write_bytes(original)
    assert {k for k in before if before[k] != after[k]} == changed


@pytest.mark.parametrize("edit, changed", [
    ("kernels/window_attn.cu", ALL),
    ("kernels/window_band.cuh", ALL),
    ("kernels/window_tiled.cuh", ALL),
    ("kernels/window.cuh", ALL),
    ("kernels/cpu_shim.h", {k for k in ALL if "cpu-kernel" in k}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_editing_a_kernel_file_changes_exactly_the_hashes_of_the_impls_that_compile_it(package_copy, unedited, edit,
                                                                                       changed):
    before = unedited
    path = package_copy / edit
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n// an edit\n")
        after = _hashes(package_copy)
    finally:
        path.write_bytes(original)
    assert before.keys() == after.keys()
    assert {k for k in before if before[k] != after[k]} == changed
    for op in {k.split("/")[0] for k in before}:  # the impls of one operator never share a hash
        mine = [h for k, h in before.items() if k.split("/")[0] == op]
        assert len(set(mine)) == len(mine), op
