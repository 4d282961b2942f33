"""Adversarial agreement: checks that an impl's right answer is not an accident of one input or of memory.

The plain agreement pass compares one call on one seeded normal input with the float64 reference. An impl
can pass that and still be wrong: it may write its inputs so the reference agrees, return a tensor cached
from an earlier call, leave output elements unwritten in memory that happens to hold the right value, or
be right only for normal-looking inputs. This module adds, around the same comparison:

- **inputs untouched**: bitwise copies of every input, parameter and buffer before each call, compared after
  (a change raises :class:`ModifiedInput`, which fails the cell);
- **poisoned free memory**: before each call, blocks of the output's and every input's size are filled with
  NaN and freed, so memory the impl gets back unwritten holds NaN, not a stale right answer;
- **several inputs**: besides the seeded normal input at the case's shape, the same impl runs on a second
  seed and on uniform, heavy-tailed, large-magnitude and all-constant inputs, on a reduced shape (the cost
  stays a few small calls per cell however large the case); the row reports the worst;
- **properties**: the operator's declared properties (``upbench.properties``) are checked on the constant
  input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .accuracy import Agreement, stage_agreement
from .cases import Case
from .plugin import Impl, Operator
from .prepare import Prepared, Stage, prepare_stage
from .properties import check_properties

# The extra input distributions, after the case's own seeded normal input ("normal" at full shape).
DISTRIBUTIONS: tuple[str, ...] = ("seed2", "uniform", "heavy", "large", "constant")
CONSTANT = 1.5  # exactly representable in every dtype; not 0 or 1, which hide scale bugs
# Large magnitudes push softmax logits past exp's overflow (fp32: 88) in an impl that forgets to subtract
# the maximum; the factor shrinks with the dtype's precision because logit rounding grows with magnitude and
# a sharp softmax in half precision is ill-conditioned for every impl, not only a wrong one.
LARGE: dict[str, float] = {"float64": 30.0, "float32": 10.0, "float16": 3.0, "bfloat16": 2.0}
HALF = ("float16", "bfloat16")


class ModifiedInput(RuntimeError):
    """An impl changed one of its inputs or parameters: a failed cell, never a result."""


# -- inputs untouched ----------------------------------------------------------------------------------------
def _bits(t: Tensor) -> Tensor:
    return t.detach().reshape(-1).contiguous().view(torch.uint8)


def _named(st: Stage) -> dict[str, Tensor]:
    named = dict(st.inputs)
    if st.module is not None:
        named |= {f"parameter {n}": p for n, p in st.module.named_parameters()}
        named |= {f"buffer {n}": b for n, b in st.module.named_buffers()}
    return named


def snapshot(st: Stage) -> dict[str, Tensor]:
    """Bitwise copies of a stage's inputs and its module's parameters and buffers."""
    return {n: _bits(t).clone() for n, t in _named(st).items()}


def modified(st: Stage, before: dict[str, Tensor]) -> list[str]:
    """Names in ``before`` whose tensor in ``st`` no longer has the same bits (or shape)."""
    now = {n: _bits(t) for n, t in _named(st).items()}
    return [n for n, b in before.items() if n not in now or now[n].shape != b.shape or not torch.equal(now[n], b)]


# -- poisoned free memory ------------------------------------------------------------------------------------
def output_numel(case: Case) -> int:
    oh, ow = case.out_hw
    return case.B * case.C * oh * ow


def poison_free_memory(sizes: list[int], device: str, dtype: torch.dtype) -> list[Tensor]:
    """Fill freed memory with NaN: blocks of these element counts that the next allocations will reuse.

    Returns guard tensors the caller keeps alive until after the call it protects. CPU: per size, three
    NaN blocks are allocated and the first two freed; the third (the guard) keeps them from merging into the
    heap's top, which glibc would trim and hand back as zero pages. Measured here in a fresh process: the next
    ``torch.empty`` of the size is all NaN in 20 of 20 tries for 1 KiB–16 MiB (in fewer for blocks under
    ~1 KiB, which come from per-size caches, and under a long-lived process's fragmented heap). Blocks
    above glibc's mmap threshold (at most 32 MiB) return from the system zeroed and cannot be poisoned:
    best effort. CUDA: torch's caching allocator keeps freed blocks and hands them out again by size, so
    one freed NaN block per size suffices (written for CUDA, checked by ``cuda_checks.selfcheck_trust``).
    """
    nan = float("nan") if dtype.is_floating_point else 0
    guards = []
    for n in sizes:
        if n <= 0:
            continue
        if device != "cuda":
            torch.empty(n, dtype=dtype)  # dropped at once: freeing an mmapped block raises glibc's threshold
        blocks = [torch.full((n,), nan, dtype=dtype, device=device) for _ in range(1 if device == "cuda" else 3)]
        if device != "cuda":
            guards.append(blocks.pop())
        del blocks
    return guards


def _poisoning(st: Stage) -> Callable[..., Tensor]:
    """The stage's callable, poisoning free memory right before each call (nothing allocates in between)."""
    sizes = [output_numel(st.case), *(t.numel() for t in st.inputs.values())]

    def call(*args: Tensor) -> Tensor:
        guards = poison_free_memory(sizes, st.case.device, st.case.torch_dtype)
        out = st.fn(*args)
        del guards
        return out
    return call


# -- input distributions -------------------------------------------------------------------------------------
def _rms(t: Tensor) -> float:
    v = float(t.double().pow(2).mean().sqrt()) if t.numel() else 1.0
    return v if v > 0 and math.isfinite(v) else 1.0


def distribution_inputs(op: Operator, case: Case, dist: str, gen: torch.Generator) -> dict[str, Tensor]:
    """The operator's own inputs for ``case`` (float32, CPU), reshaped in distribution ``dist``.

    Every variant keeps each tensor's RMS (but ``large``), so an operator's input scaling (e.g. logits
    scaled to a useful softmax temperature) carries over.
    """
    base = op.inputs(case, gen)
    out = {}
    for k, t in base.items():
        if not t.is_floating_point():
            out[k] = t
            continue
        r = _rms(t)
        if dist in ("normal", "seed2"):
            v = t
        elif dist == "uniform":
            v = (torch.rand(t.shape, generator=gen) * 2 - 1) * (r * math.sqrt(3))
        elif dist == "heavy":  # Student t with 3 degrees of freedom (unit variance after the √(1/3))
            z = torch.randn(t.shape, generator=gen)
            chi2 = torch.randn((3, *t.shape), generator=gen).pow(2).sum(0)
            v = z / (chi2 / 3).sqrt() * (r / math.sqrt(3))
        elif dist == "large":
            v = t * LARGE[case.dtype]
        elif dist == "constant":
            v = torch.full_like(t, CONSTANT)
        else:
            raise ValueError(f"unknown input distribution {dist!r}")
        out[k] = v.contiguous()
    return out


def reduced_case(op: Operator, case: Case) -> Case:
    """The case at a small spatial size that still has border and interior pixels: H, W ≤ K + 4."""
    k = case.K if (op.uses_K and case.K) else 3
    lim = k + 4
    return case.with_(H=min(case.H, lim), W=min(case.w, lim) if case.W is not None or case.H > lim else None)


def _with_inputs(st: Stage, raw: dict[str, Tensor]) -> Stage:
    dev, dt = torch.device(st.case.device), st.case.torch_dtype
    ins = {k: v.to(dev, dt) if v.is_floating_point() else v.to(dev) for k, v in raw.items()}
    return Stage(st.case, st.fn, ins, st.module)


# -- the checked agreement -----------------------------------------------------------------------------------
# compare(op, stage, pass_) -> (agreement of that stage, the impl's outputs): accuracy.stage_agreement
Compare = Callable[[Operator, Stage, str], tuple[Agreement, list[Tensor]]]


@dataclass(frozen=True)
class Checked:
    agreement: Agreement  # the worst over every input
    worst_input: str  # which input gave it ("normal", "uniform@9x9", …)
    properties: str  # "ok", "" (none declared, or not a forward pass) or "failed: …"

    failed_inputs: tuple[str, ...] = ()  # every input whose agreement missed the tolerance

    def columns(self) -> dict[str, object]:
        return {"agree_worst_input": self.worst_input, "agree_failed_inputs": ",".join(self.failed_inputs),
                "property_check": self.properties}


def _call(compare: Compare, op: Operator, st: Stage, pass_: str) -> tuple[Agreement, list[Tensor]]:
    before = snapshot(st)
    a, outs = compare(op, Stage(st.case, _poisoning(st), st.inputs, st.module), pass_)
    changed = modified(st, before)
    if changed:
        raise ModifiedInput(f"modified input {', '.join(changed)}")
    return a, outs


def checked_agreement(op: Operator, impl: Impl, stages: list[Stage], pass_: str, compare: Compare,
                      distributions: tuple[str, ...] | None = None) -> Checked:
    """Agreement over the case's own input and every distribution; raises ModifiedInput."""
    distributions = DISTRIBUTIONS if distributions is None else distributions
    found: list[tuple[Agreement, str]] = []
    for st in stages:
        found.append((_call(compare, op, st, pass_)[0], "normal"))
    props: list[str] = []
    # one reduced stage per stage, shared by every distribution: an impl's own state (a cache) persists
    smalls = [reduced_case(op, st.case) for st in stages]
    bases = [st if sm == st.case else prepare_stage(op, impl, sm) for st, sm in zip(stages, smalls, strict=True)]
    for i, dist in enumerate(distributions):
        if dist == "constant" and pass_ != "fwd":
            continue  # gradients through a flat softmax cancel to ~0: relative errors would be meaningless
        if dist == "large" and pass_ != "fwd" and stages[0].case.dtype in HALF:
            continue  # saturated sigmoids/softmaxes: half-precision gradients of every impl miss by ~100 %
        for st, small, base in zip(stages, smalls, bases, strict=True):
            gen = torch.Generator().manual_seed(small.seed() + 101 + i)
            sti = _with_inputs(base, distribution_inputs(op, small, dist, gen))
            a, outs = _call(compare, op, sti, pass_)
            label = dist if small == st.case else f"{dist}@{small.H}x{small.w}"
            found.append((a, label))
            if dist == "constant" and pass_ == "fwd" and op.properties:
                props += check_properties(op, small, outs[0], CONSTANT)
    worst = Agreement.worst([a for a, _ in found])
    label = next(lbl for a, lbl in found if a is worst)
    declared = bool(op.properties) and pass_ == "fwd" and "constant" in distributions
    prop = ("failed: " + "; ".join(props)) if props else ("ok" if declared else "")
    failed = tuple(dict.fromkeys(lbl for a, lbl in found if not a.ok))
    return Checked(worst, label, prop, failed)


def checked_agreement_of(p: Prepared) -> Checked:
    """The accuracy metric: :func:`checked_agreement` of a prepared cell against the float64 reference."""
    return checked_agreement(p.op, p.impl, p.stages, p.cell.case.pass_, stage_agreement)
