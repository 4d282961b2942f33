"""Retired instructions per call, counted by valgrind's callgrind: a CPU cost that a busy machine cannot change.

Wall time on a shared machine moves with the neighbours; the number of instructions a call executes does
not (it varies by ~0.1 % between runs, from allocator state). ``upbench compare`` gates on it when both sides
have it, so a CPU gate can be tight (a few per cent) and still never cry wolf under load.

How: one child process per run, under ``valgrind --tool=callgrind --instr-atstart=no``, imports torch and
prepares every cell at native speed (instrumentation off), then for each cell switches instrumentation on,
zeroes the counters, runs the call a fixed number of times and dumps the counters — a few times over, which
gives the samples. The child asks callgrind for this through valgrind's client-request instruction sequence,
emitted as a few bytes of x86-64 machine code (a no-op returning 0 when not under valgrind), so neither a
compiler nor valgrind's headers are needed. Elsewhere (no valgrind, another architecture) the columns are
absent with the reason.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

CALLS = 3  # calls per sample: the per-call count is the dump's total / CALLS
REPEATS = 5  # samples per cell
TIMEOUT_S = 1800

# Callgrind's client requests (valgrind/callgrind.h): VG_USERREQ_TOOL_BASE('C', 'T') + n.
_BASE = (ord("C") << 24) | (ord("T") << 16)
_DUMP, _ZERO, _START, _STOP = _BASE + 0, _BASE + 1, _BASE + 4, _BASE + 5
# long request(long *args): valgrind's amd64 "special instruction preamble" (four rotations of rdi that add up
# to 128 bits, i.e. a no-op natively) followed by xchg rbx,rbx; args[0] is the request, the result is in rdx.
_CODE = bytes.fromhex("4889f8" "31d2" "48c1c703" "48c1c70d" "48c1c73d" "48c1c733" "4887db" "4889d0" "c3")


def unavailable() -> str | None:
    """Why instruction counts cannot be taken here, or None."""
    if platform.machine() not in ("x86_64", "AMD64") or sys.platform != "linux":
        return f"instruction counts need Linux on x86-64 (this is {sys.platform} {platform.machine()})"
    if shutil.which("valgrind") is None:
        return "valgrind is not installed (apt-get install valgrind)"
    return None


def tool_version() -> str:
    try:
        out = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, timeout=30).stdout
        return "callgrind " + out.strip().removeprefix("valgrind-")
    except (OSError, subprocess.SubprocessError):
        return "callgrind"


class _Requests:
    """Callgrind's client requests, callable from Python."""

    def __init__(self) -> None:
        self._buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        self._buf.write(_CODE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(self._buf))
        self._fn = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.POINTER(ctypes.c_long))(addr)

    def __call__(self, request: int) -> int:
        return self._fn((ctypes.c_long * 6)(request, 0, 0, 0, 0, 0))


def spec(cell: Any) -> dict[str, Any]:
    """A cell as JSON for the child (cases as plain dicts)."""
    return {"id": cell.id, "op": cell.op, "impl": cell.impl, "stages": [asdict(c) for c in cell.stages]}


def parse_dump(text: str) -> int:
    """The instruction total of one callgrind dump (its ``summary:`` line; ``totals:`` in some versions)."""
    m = re.search(r"^summary:\s*(\d+)", text, re.M) or re.search(r"^totals:\s*(\d+)", text, re.M)
    if not m:
        raise ValueError("callgrind dump without a summary line")
    return int(m[1])


def for_cells(cells: list[Any], calls: int = CALLS, repeats: int = REPEATS) -> dict[str, dict[str, Any]]:
    """Instruction columns per cell id, for the runnable CPU cells (one valgrind child for all of them).

    A cell the child could not count gets ``instructions_reason``; nothing here raises for one cell's sake.
    """
    todo = [c for c in cells if not c.skip and c.case.device == "cpu"]
    out: dict[str, dict[str, Any]] = {c.id: {"instructions_reason": "CPU-only metric"}
                                      for c in cells if not c.skip and c.case.device != "cpu"}
    if not todo:
        return out
    why = unavailable()
    if why:
        out.update({c.id: {"instructions_reason": why} for c in todo})
        return out
    tool = tool_version()
    with tempfile.TemporaryDirectory(prefix="upbench-instr-") as tmp:
        t = Path(tmp)
        (t / "spec.json").write_text(json.dumps({"cells": [spec(c) for c in todo], "calls": calls,
                                                 "repeats": repeats}))
        # The child sees this process's modules (plugins included) and builds our CPU kernels for AVX2.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "UPBENCH_CPU_SHIM": "count"}
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "-q",
               f"--callgrind-out-file={t / 'cg.out'}", sys.executable, "-m", "upbench.instructions", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
            failure = "" if proc.returncode == 0 else f"valgrind exited {proc.returncode}: " + (
                proc.stderr.strip().splitlines() or [""])[-1][:200]
        except (OSError, subprocess.SubprocessError) as exc:
            failure = f"valgrind failed: {exc}"
        try:
            manifest = json.loads((t / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = {"dumps": [], "errors": {}}
            failure = failure or "the counting process wrote no manifest"
        per_cell: dict[str, list[float]] = {}
        for n, (cid, ncalls) in enumerate(manifest["dumps"], start=1):
            try:
                total = parse_dump((t / f"cg.out.{n}").read_text())
            except (OSError, ValueError) as exc:
                failure = failure or f"unreadable callgrind dump {n}: {exc}"
                continue
            per_cell.setdefault(cid, []).append(total / ncalls)
    for c in todo:
        samples = per_cell.get(c.id)
        if samples:
            out[c.id] = {"instructions_per_call": statistics.median(samples),
                         "instructions_samples": json.dumps([round(s) for s in samples]),
                         "instructions_tool": tool}
        else:
            out[c.id] = {"instructions_reason": manifest["errors"].get(c.id) or failure or "not counted"}
    return out


def _child(tmp: str) -> None:
    """Inside valgrind: prepare each cell natively, count its calls with instrumentation on."""
    import torch

    from .cases import Case
    from .prepare import prepare
    from .sweeps import Cell

    t = Path(tmp)
    job = json.loads((t / "spec.json").read_text())
    req = _Requests()
    dumps: list[tuple[str, int]] = []
    errors: dict[str, str] = {}

    def save() -> None:
        (t / "manifest.json").write_text(json.dumps({"dumps": dumps, "errors": errors}))

    for c in job["cells"]:
        try:
            stages = tuple(Case(**{**s, "hp": tuple(tuple(kv) for kv in s["hp"])}) for s in c["stages"])
            if stages[0].threads:
                torch.set_num_threads(stages[0].threads)
            fn = prepare(Cell(c["op"], c["impl"], stages, None, c["id"])).fn
            fn()
            req(_START)
            fn()  # translated once under instrumentation before counting
            for _ in range(job["repeats"]):
                req(_ZERO)
                for _ in range(job["calls"]):
                    fn()
                req(_DUMP)
                dumps.append((c["id"], job["calls"]))
            req(_STOP)
        except Exception as exc:  # one cell's failure is recorded; the others are still counted
            req(_STOP)
            errors[c["id"]] = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
        save()
    save()


if __name__ == "__main__":
    _child(sys.argv[1])
