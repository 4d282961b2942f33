"""A third-party operator plugin, registered through the upbench.operators entry-point group.

``fake-scale``: nearest upsampling times a learned per-channel scale. Its impls exercise the harness:
``good`` is correct, ``border-bug`` is wrong on border pixels only, ``wrong`` is off everywhere,
``crash`` raises, ``fwd-only`` has no backward, ``slow`` does the work SLOW_FACTOR times (a fraction
repeats that share of the channels; ``UPBENCH_FAKE_SLOW_FACTOR`` overrides it, so child processes see it too),
``kernel`` is ``good`` declaring a kernel source file (``scale.cu``, never compiled) for the provenance tests.
Planted trust failures (upbench.adversarial): ``mutates-input`` scribbles on x after computing, ``cached``
returns its first result forever, ``normal-only`` saturates at ±4 (right for normal inputs only),
``assumes-zeroed`` accumulates into ``torch.empty`` memory as if it were zero; ``fallback`` reports the backend
that ran.

``fake-nearest``: nearest upsampling declaring ``convex`` and ``exact_on_constant``; its ``const-wrong`` impl
is wrong only on constant maps, and its ``mac_claim`` hyperparameter inflates the MAC count so an honest
impl's latency falls below the speed-of-light floor.
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


def _mutates_input(case: Case, m: nn.Module):
    good = _good(case, m)

    def run(x: Tensor) -> Tensor:
        out = good(x)
        x.mul_(0.5)  # uses its input as scratch space
        return out
    return run


def _cached(case: Case, m: nn.Module):
    good = _good(case, m)
    memo: list[Tensor] = []

    def run(x: Tensor) -> Tensor:
        if not memo:
            memo.append(good(x))
        return memo[0]  # the previous call's tensor, whatever the input now
    return run


def _normal_only(case: Case, m: nn.Module):
    good = _good(case, m)
    return lambda x: good(x.clamp(-4.0, 4.0))  # saturates: fine for N(0, 1), wrong for tails and large values


def _assumes_zeroed(case: Case, m: nn.Module):
    good = _good(case, m)

    def run(x: Tensor) -> Tensor:
        out = torch.empty(x.shape[0], x.shape[1], x.shape[2] * case.s, x.shape[3] * case.s, dtype=x.dtype)
        out += good(x)  # right only when the allocator hands back zeroed pages
        return out
    return run


def _fallback(case: Case, m: nn.Module):
    run = _good(case, m)
    run.upbench_backend = lambda: "torch (optional library missing)"  # what ran, decided at call time
    return run


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
        Impl("mutates-input", _mutates_input, "halves x after computing", backward=False),
        Impl("cached", _cached, "returns its first result forever", backward=False),
        Impl("normal-only", _normal_only, "clamps x to ±4 first", backward=False),
        Impl("assumes-zeroed", _assumes_zeroed, "accumulates into torch.empty", backward=False),
        Impl("fallback", _fallback, "the good impl, saying which backend ran", backward=False),
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


def _nearest(case: Case, m: None):
    return lambda x: x.repeat_interleave(case.s, 2).repeat_interleave(case.s, 3)


def _const_wrong(case: Case, m: None):
    good = _nearest(case, m)

    def run(x: Tensor) -> Tensor:
        out = good(x)
        return out + 1.0 if bool((x == x.flatten()[0]).all()) else out  # a bad special case for flat inputs
    return run


class FakeNearest(Operator):
    name = "fake-nearest"
    description = "test plugin: nearest upsampling with declared properties"
    uses_K = False
    properties = ("convex", "exact_on_constant")
    hyperparams = (HyperParam("mac_claim", 1, "MACs claimed per output element (a huge value: impossible)"),)
    impls = (
        Impl("good", _nearest, "correct", backward=False),
        Impl("const-wrong", _const_wrong, "adds 1 on constant inputs", backward=False),
    )

    def reference(self, case: Case, inputs: dict[str, Tensor], module: None) -> Tensor:
        return inputs["x"].repeat_interleave(case.s, 2).repeat_interleave(case.s, 3)

    def macs(self, case: Case) -> int:
        oh, ow = case.out_hw
        return case.B * case.C * oh * ow * int(case.params["mac_claim"])


FAKE_NEAREST = FakeNearest()
