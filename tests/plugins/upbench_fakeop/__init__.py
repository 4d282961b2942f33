"""A third-party operator plugin, registered through the upbench.operators entry-point group.

``fake-scale``: nearest upsampling times a learned per-channel scale. Its impls exercise the harness:
``good`` is correct, ``border-bug`` is wrong on border pixels only, ``wrong`` is off everywhere,
``crash`` raises, ``fwd-only`` has no backward, ``slow`` does the work SLOW_FACTOR times (a fraction
repeats that share of the channels; ``UPBENCH_FAKE_SLOW_FACTOR`` overrides it, so child processes see it too),
``kernel`` is ``good`` declaring a kernel source file (``scale.cu``, never compiled) for the provenance tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from upbench import Case, HyperParam, Impl, Operator

SLOW_FACTOR = {"n": 3}
KERNEL = Path(__file__).with_name("scale.cu")


def _good(case: Case, m: nn.Module):
    def run(x: Tensor) -> Tensor:
        up = x.repeat_interleave(case.s, 2).repeat_interleave(case.s, 3)
        return up * m.scale.view(1, -1, 1, 1)
    return run


def _border_bug(case: Case, m: nn.Module):
    good = _good(case, m)

    def run(x: Tensor) -> Tensor:
        out = good(x)
        out[..., 0, :] += 1.0  # wrong only in the first output row: a border-only bug
        return out
    return run


def _wrong(case: Case, m: nn.Module):
    good = _good(case, m)
    return lambda x: good(x) * 1.01


def _crash(case: Case, m: nn.Module):
    def run(x: Tensor) -> Tensor:
        raise RuntimeError("kernel exploded\nsecond line is not shown")
    return run


def _slow(case: Case, m: nn.Module):
    good = _good(case, m)
    factor = float(os.environ.get("UPBENCH_FAKE_SLOW_FACTOR") or SLOW_FACTOR["n"])
    whole, part = int(factor), factor - int(factor)
    k = round(part * case.C)  # the fraction: the same work again on that share of the channels

    def run(x: Tensor) -> Tensor:
        out = good(x)
        for _ in range(whole - 1):
            out = good(x)
        if k:
            (x[:, :k].repeat_interleave(case.s, 2).repeat_interleave(case.s, 3)
             * m.scale[:k].view(1, -1, 1, 1))
        return out
    return run


def _nondeterministic(case: Case, m: nn.Module):
    good = _good(case, m)
    return lambda x: good(x) * (1 + torch.rand(()) * 1e-6)  # like an atomics-ordered sum: last bits differ


class FakeScale(Operator):
    name = "fake-scale"
    description = "test plugin: nearest upsampling times a learned per-channel scale"
    uses_K = False
    hyperparams = (HyperParam("init", 1.5, "initial scale", None),)
    impls = (
        Impl("good", _good, "correct"),
        Impl("border-bug", _border_bug, "wrong in the first output row"),
        Impl("wrong", _wrong, "1 % off everywhere"),
        Impl("crash", _crash, "raises"),
        Impl("fwd-only", _good, "no backward", backward=False),
        Impl("slow", _slow, "the good impl, SLOW_FACTOR times"),
        Impl("nondeterministic", _nondeterministic, "last-bit noise", deterministic=False),
        Impl("kernel", _good, "the good impl, declaring a kernel source", sources=(str(KERNEL),)),
    )

    def module(self, case: Case) -> nn.Module:
        m = nn.Module()
        m.scale = nn.Parameter(torch.full((case.C,), float(case.params["init"])) + torch.rand(case.C))
        return m

    def reference(self, case: Case, inputs: dict[str, Tensor], module: nn.Module) -> Tensor:
        x = inputs["x"]
        return x.repeat_interleave(case.s, 2).repeat_interleave(case.s, 3) * module.scale.view(1, -1, 1, 1)

    def check(self, case: Case) -> str | None:
        if case.C > 512:
            return f"C={case.C} is too many channels for fake-scale (at most 512)"
        return super().check(case)

    def macs(self, case: Case) -> int:
        oh, ow = case.out_hw
        return case.B * case.C * oh * ow


FAKE_SCALE = FakeScale()
