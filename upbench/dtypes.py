"""The dtypes a case can take, in one table: torch dtype, kernel-symbol suffix, default agreement tolerances.

Kernel bindings name their compiled entry points ``<kernel>_<suffix>``; operators start from the default
tolerances and loosen one dtype where their arithmetic needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DType:
    name: str
    torch: torch.dtype
    suffix: str  # of compiled kernel symbols
    tolerance: float  # forward: max |impl − reference| / RMS(reference)
    bwd_tolerance: float  # gradients pass through softmax, norms and gathers in the working dtype: looser


# Forward tolerances are relative to the reference's RMS, so near-zero outputs cannot pass on an absolute
# bound; loose enough for fp32 accumulation of K²·C terms. Half-precision backward errors are several times
# the forward's.
TABLE: tuple[DType, ...] = (
    DType("float64", torch.float64, "f64", 1e-9, 1e-8),
    DType("float32", torch.float32, "f32", 1e-4, 1e-3),
    DType("float16", torch.float16, "f16", 1e-2, 5e-2),
    DType("bfloat16", torch.bfloat16, "bf16", 6e-2, 0.25),
)
BY_NAME: dict[str, DType] = {d.name: d for d in TABLE}
DTYPES: dict[str, torch.dtype] = {d.name: d.torch for d in TABLE}
SUFFIX: dict[torch.dtype, str] = {d.torch: d.suffix for d in TABLE}
DEFAULT_TOLERANCE: dict[str, float] = {d.name: d.tolerance for d in TABLE}
DEFAULT_BWD_TOLERANCE: dict[str, float] = {d.name: d.bwd_tolerance for d in TABLE}
