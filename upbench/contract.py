"""What an impl's callable must return, checked once per cell before anything is measured.

The contract (docs/plugins.md): called with the inputs, the callable returns one floating-point
``torch.Tensor``, the operator's output — with finite values, since the inputs are finite random tensors.
A breach fails the cell with a message that names the contract, not an error from deep inside a metric.
"""

from __future__ import annotations

import torch

CONTRACT = "an impl's callable returns one floating-point torch.Tensor (docs/plugins.md)"


class ContractError(RuntimeError):
    """An impl broke the plugin contract or returned non-finite values."""


def check_output(out: object, impl: str) -> None:
    if not isinstance(out, torch.Tensor):
        raise ContractError(f"impl {impl} returned {type(out).__name__}; {CONTRACT}")
    if not out.is_floating_point():
        raise ContractError(f"impl {impl} returned a {out.dtype} tensor; {CONTRACT}")
    bad = int((~torch.isfinite(out.detach())).sum())
    if bad:
        raise ContractError(f"non-finite output: {bad} of {out.numel()} values of impl {impl} are NaN or inf")


def check_stages(stages: list, impl: str) -> None:
    """One forward call per stage (``prepare.Stage``), outside every timer; raises ContractError."""
    with torch.no_grad():
        for st in stages:
            check_output(st.fn(*st.inputs.values()), impl)
