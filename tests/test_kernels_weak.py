"""The kernels under the weak-memory SIMT shim (``weak``), and barrier mutants that it must catch.

The ``weak`` build runs the GPU's lane model (kernel_binding.GPU_DEFINES: 4 warps of 32 lanes, 8 channels per
lane) with shared memory private to a thread until a barrier publishes it, a seeded random thread order
between synchronisation points, shuffles that publish nothing, poisoned shared memory and blocks in random
order (kernels/cpu_shim.h). Every kernel must agree with its float64 reference there, under two seeds.

Mutants are generated from the sources: for every barrier call found in kernels/ (kernel_binding.
barrier_sites), a copy of kernels/ with that one call removed (and only the f32 entries, which the checks use),
plus one with all of them removed. Each is built and checked in its own process, forked from a server per
variant that imported torch once (a race or deadlock report aborts the process), all in one parallel batch; a
mutant in window_tiled.cuh or window_band.cuh runs that header's kernels, any other every kernel. Every mutant
must fail. The table of mutants and how each was caught is printed (pytest -s).
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from upbench import _cpu_shim
from upbench.operators import kernel_binding as kb

pytestmark = pytest.mark.skipif(_cpu_shim.unavailable_reason() is not None,
                                reason=str(_cpu_shim.unavailable_reason()))

# A fork server for the argv[1] build (weak or race): it imports once (torch under ThreadSanitizer takes 15-50 s),
# then forks a child per job line on stdin (json: id, kernel dir or "" for the package's, parts, seed, log file)
# and prints "id exit-status" as each child ends. A child returns from serve() into the checks below, its stdout
# and stderr on the log file: the kernels of the given PARTS, NaN-poisoned outputs, tiny border-heavy shapes;
# C = 260 gives a full 256-channel chunk and a tail. float32 only (so mutant builds hold only the f32 entries).
# Exit 0 and "ok", or 1 and the first disagreement; a race/deadlock report aborts.
DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    from upbench import _cpu_shim
    from upbench.operators import carafe_kernels as ck, sapa_kernels as sk, window_attn_kernels as wk
    from upbench.operators.reassembly import reassemble_reference
    from upbench.operators.sapa_core import core_reference

    def serve():
        import json, os, select
        jobs, buf, eof = {}, b"", False
        while not eof or jobs:
            if not eof and select.select([0], [], [], 0.05)[0]:
                chunk = os.read(0, 1 << 16)
                eof, buf = not chunk, buf + chunk
                while b"\\n" in buf:
                    line, buf = buf.split(b"\\n", 1)
                    jid, kdir, parts, seed, log = json.loads(line)
                    pid = os.fork()
                    if pid == 0:  # the child: its job's checks, below
                        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                        os.dup2(fd, 1)
                        os.dup2(fd, 2)
                        os.environ["UPBENCH_SHIM_SEED"] = str(seed)
                        return (Path(kdir) if kdir else None), parts
                    jobs[pid] = jid
            while jobs:
                pid, status = os.waitpid(-1, 0 if eof else os.WNOHANG)
                if pid == 0:
                    break
                print(jobs.pop(pid), os.waitstatus_to_exitcode(status), flush=True)
        sys.exit(0)

    variant = sys.argv[1]
    kdir, parts = serve()
    n = 1 if variant == "race" else 2  # ThreadSanitizer is slow: the smallest shape of each family there
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def nan(*shape):
        return torch.full(shape, float("nan"))

    def close(what, got, ref, tol=2e-6):
        err = (got.double() - ref).abs().max().item() if torch.isfinite(got).all() else float("inf")
        if not err <= tol * ref.abs().max().item():
            print(f"FAIL {what}: max error {err:.3g}", flush=True)
            sys.exit(1)

    with _cpu_shim.use_variant(variant, kdir):
        if "sapa" in parts:  # SAPA's ops: the family's entries with a K×K window, zero rule
            for B, H, W, D, C, K, s in [(1, 2, 3, 5, 7, 3, 2), (1, 2, 2, 33, 260, 5, 3)][:n]:
                q, k, v = rnd(B, H * s, W * s, D) * D ** -0.5, rnd(B, H, W, D), rnd(B, H, W, C)
                gr, A = rnd(B, H * s, W * s, C), rnd(B, H * s, W * s, K * K).softmax(-1)
                f = [t.float() for t in (q, k, v, gr, A)]
                shape = (B, H, W, D, C, K, s)
                close(f"sapa fused {shape}", sk.fused_into(f[0], f[1], f[2], nan(B, H * s, W * s, C), K, s),
                      core_reference(f[0].double(), f[1].double(), f[2].double(), K, s))
                close(f"sapa sim {shape}", sk.sim_into(f[0], f[1], nan(B, H * s, W * s, K * K), K, s),
                      sk.sim_reference(f[0].double(), f[1].double(), K, s))
                close(f"sapa atn {(B, H, W, D, C, K, s)}", sk.atn_into(f[4], f[2], nan(B, H * s, W * s, C), K, s),
                      sk.atn_reference(f[4].double(), f[2].double(), K, s))
                close(f"sapa atn_t {(B, H, W, D, C, K, s)}", sk.atn_t_into(f[4], f[3], nan(B, H, W, C), K, s),
                      sk.atn_t_reference(f[4].double(), f[3].double(), K, s))
        if "carafe" in parts:  # CARAFE's reassembly, plain and fused with the softmax (groups)
            for B, C, H, W, K, s, G in [(1, 6, 2, 3, 3, 2, 2), (1, 260, 2, 2, 5, 2, 1)][:n]:
                x = rnd(B, C, H, W).float().requires_grad_()
                M = rnd(B, G * K * K, H * s, W * s).softmax(1).float().requires_grad_()
                dy = rnd(B, C, H * s, W * s).float()
                y = ck.reassemble_kernel(x, M, K, s, G)
                dx, dM = torch.autograd.grad(y, (x, M), dy)
                x64, M64 = x.detach().double().requires_grad_(), M.detach().double().requires_grad_()
                y64 = reassemble_reference(x64, M64, K, s, G)
                dx64, dM64 = torch.autograd.grad(y64, (x64, M64), dy.double())
                for what, a, b in (("fwd", y, y64), ("dx", dx, dx64), ("dM", dM, dM64)):
                    close(f"carafe {what} {(B, C, H, W, K, s, G)}", a.detach(), b.detach())
                L64 = M.detach().double()  # as logits
                A64 = L64.view(B, G, K * K, H * s, W * s).softmax(2).view(L64.shape)
                close(f"carafe fused {(B, C, H, W, K, s, G)}", ck.reassemble_fused(x.detach(), M.detach(), K, s, G),
                      reassemble_reference(x.detach().double(), A64, K, s, G))
        if "window" in parts:
            # dilation × K past the map with two groups; UPLiFT's offsets (clamp); NAF's shift rule, C = 260
            for win, B, H, W, D, C, s, G in [(wk.Window.square(3, 2), 1, 2, 3, 5, 7, 2, 2),
                                             (wk.Window(((0, 0), (1, -1), (-2, 2), (0, 1), (2, 0)), "clamp"),
                                              1, 2, 2, 4, 6, 3, 1),
                                             (wk.Window.square(3, 1, "shift"), 1, 3, 3, 33, 260, 2, 1)][:n + 1]:
                M, w = len(win.offsets), (win.flat, win.code, s, G)
                q, k, v = rnd(B, H * s, W * s, G * D), rnd(B, H, W, G * D), rnd(B, H, W, G * C)
                gr, L = rnd(B, H * s, W * s, G * C), rnd(B, H * s, W * s, G * M)
                A = L.view(B, H * s, W * s, G, M).softmax(-1).view(L.shape)
                f = [t.float() for t in (q, k, v, gr, L, A)]
                d = [t.double() for t in f]
                shape = (win.border, B, H, W, D, C, s, G)
                close(f"window_attn fused {shape}", wk.fused_into(f[0], f[1], f[2], nan(*gr.shape), *w, 0.5),
                      wk.reference(d[0], d[1], d[2], win, s, G, 0.5))
                close(f"window_attn fused_given {shape}", wk.fused_given_into(f[4], f[2], nan(*gr.shape), *w),
                      wk.reference(None, None, d[2], win, s, G, L=d[4]))
                close(f"window_attn sim {shape}", wk.sim_into(f[0], f[1], nan(*L.shape), *w, 0.5),
                      wk.sim_reference(d[0], d[1], win, s, G, 0.5))
                close(f"window_attn atn {shape}", wk.atn_into(f[5], f[2], nan(*gr.shape), *w),
                      wk.atn_reference(d[5], d[2], win, s, G))
                close(f"window_attn atn_t {shape}", wk.atn_t_into(f[5], f[3], nan(*v.shape), *w),
                      wk.atn_t_reference(d[5], d[3], win, s, G))
        if "tiled" in parts:
            # The tiled fused forward (window_tiled.cuh), pinned so that each barrier matters: several D and C
            # slices (40 > 32 channels), several passes of children (NCB = 3), several threads per child, one block
            # per group looping over 4 tiles; computed and given logits.
            for win, tile in [(wk.Window.square(3, 1), (1, 2, 3)), (wk.Window.square(3, 1, "clamp"), (2, 1, 5))][:n]:
                B, H, W, D, C, s, G = 1, 2, 3, 40, 40, 2, 2
                M, w = len(win.offsets), (win.flat, win.code, s, G)
                q, k, v = rnd(B, H * s, W * s, G * D), rnd(B, H, W, G * D), rnd(B, H, W, G * C)
                f = [t.float() for t in (q, k, v, rnd(B, H * s, W * s, G * M))]
                d = [t.double() for t in f]
                pin = dict(path="tiled", tile=tile, blocks=1)
                shape = (win.border, B, H, W, D, C, s, G, tile)
                close(f"window_attn tiled {shape}", wk.fused_into(*f[:3], nan(B, H * s, W * s, G * C), *w, 0.5, **pin),
                      wk.reference(d[0], d[1], d[2], win, s, G, 0.5))
                close(f"window_attn tiled_given {shape}",
                      wk.fused_given_into(f[3], f[2], nan(B, H * s, W * s, G * C), *w, **pin),
                      wk.reference(None, None, d[2], win, s, G, L=d[3]))
        if "band" in parts:
            # band windows (AnyUp's, clipped by the borders; two heads; then C = 260 with a 256-channel chunk)
            for B, H, W, D, C, s, G in [(1, 3, 2, 5, 7, 2, 2), (1, 2, 3, 33, 260, 3, 1)][:n]:
                from upbench.operators.anyup import windows
                (r0, r1), (c0, c1) = windows(H * s, H, 0.3), windows(W * s, W, 0.3)
                bd = wk.Band.from_ranges(r0, r1, c0, c1, H, W, s)
                w, M = (bd.table, bd.Ku, bd.Kv, s, G), bd.M
                rok = (torch.arange(H) >= r0[:, None]) & (torch.arange(H) < r1[:, None])
                cok = (torch.arange(W) >= c0[:, None]) & (torch.arange(W) < c1[:, None])
                q, k, v = rnd(B, H * s, W * s, G * D), rnd(B, H, W, G * D), rnd(B, H, W, C)
                vg, gr, A = rnd(B, H, W, G * C), rnd(B, H * s, W * s, G * C), rnd(B, H * s, W * s, G * M)
                f = [t.float() for t in (q, k, v, vg, gr, A)]
                d = [t.double() for t in f]
                shape = ("band", B, H, W, D, C, s, G)
                close(f"window_attn band_fused_mean {shape}",
                      wk.band_fused_mean_into(f[0], f[1], f[2], nan(B, H * s, W * s, C), *w, 0.5),
                      wk.band_reference(d[0], d[1], d[2], rok, cok, G, 0.5))
                close(f"window_attn band_sim {shape}", wk.band_sim_into(f[0], f[1], nan(*A.shape), *w, 0.5),
                      wk.band_sim_reference(d[0], d[1], bd, G, 0.5))
                close(f"window_attn band_atn {shape}", wk.band_atn_into(f[5], f[3], nan(*gr.shape), *w),
                      wk.band_atn_reference(d[5], d[3], bd, G))
                close(f"window_attn band_atn_t {shape}", wk.band_atn_t_into(f[5], f[4], nan(*vg.shape), *w),
                      wk.band_atn_t_reference(d[5], d[4], bd, G))
    print("ok", flush=True)
""")
FAMILIES = ("window_attn",)  # the one kernel family; SAPA's and CARAFE's bindings run on it
# The driver's parts: SAPA's and CARAFE's bindings and the family's own warp kernels (window_attn.cu), the tiled
# fused forward (window_tiled.cuh), the band kernels (window_band.cuh).
PARTS = ("sapa", "carafe", "window", "tiled", "band")
# A barrier in window_tiled.cuh or window_band.cuh can only change the entries built from that header's kernels
# (nothing else calls upb::wt:: or the band_*_kernel functions; asserted in _parts), so its mutant runs only
# those; a barrier anywhere else (window_attn.cu's wa:: helpers, which the band kernels also call; the common
# headers) runs every part.
HEADER_PARTS = {"window_tiled.cuh": ("tiled",), "window_band.cuh": ("band",)}
# The entry instantiations, one line per dtype; a mutant's copy keeps the f32 ones only (the driver runs float32),
# which halves its two builds.
_ENTRIES = re.compile(r"^UPB_WA_\w*ENTRIES\((\w+), [^)]*\)$", re.MULTILINE)


TSAN = _cpu_shim.sanitizer_runtime("libtsan.so")
# weak: the weak-memory model catches a read that a missing barrier leaves unpublished (poison or stale
# values); race: ThreadSanitizer with shuffles that order nothing catches what no value shows, e.g. a lane
# overwriting scratch that another lane may still read (write after read).
VARIANTS = ("weak", "race") if TSAN else ("weak",)


def _server(variant: str, tmp: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if variant == "race":
        env.update(LD_PRELOAD=TSAN or "", TSAN_OPTIONS="halt_on_error=1 exitcode=66 report_signal_unsafe=0")
    with open(tmp / f"server-{variant}.log", "w") as log:
        return subprocess.Popen([sys.executable, "-c", DRIVER, variant], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log)


def _how(rc: int, out: str) -> str:
    if rc == 0:
        return "not caught"
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("FAIL ") or "cpu_shim (weak)" in line:
            return re.sub(r"^cpu_shim \(weak\): ", "", line.removeprefix("FAIL "))
        if "ThreadSanitizer: data race" in line:
            accesses = []
            for j, acc in enumerate(lines[i + 1:], i + 1):
                if m := re.match(r"\s*(?:Previous )?(read|write) of size \d+", acc, re.IGNORECASE):
                    frame = re.search(r"#0 (.*) (\S+):(\d+) \(", lines[j + 1]) if j + 1 < len(lines) else None
                    where = f"{Path(frame.group(2)).name}:{frame.group(3)}" if frame else "?"
                    accesses.append(f"{m.group(1).lower()} at {where}")
                if len(accesses) == 2:
                    break
            return "data race (ThreadSanitizer): " + " vs ".join(accesses)
    return f"exit {rc}: {out.strip().splitlines()[-1] if out.strip() else ''}"


def _parts(file: str, src: Path) -> list[str]:
    """The driver parts whose entries a barrier in ``file`` can change (HEADER_PARTS; every part otherwise)."""
    assert kb.families_using(file, FAMILIES), f"{file}: a barrier outside the {FAMILIES} sources"
    if file not in HEADER_PARTS:
        return list(PARTS)
    # the header's kernels are reached only from its own entries: no other source names them
    names = {"window_tiled.cuh": r"\bwt::", "window_band.cuh": r"\bband_\w*_kernel\b"}[file]
    for p in src.iterdir():
        if p.suffix in (".cu", ".cuh", ".h") and p.name != file:
            text = _ENTRIES.sub("", re.sub(r"#define UPB_WA_\w*ENTRIES(?:[^\n]*\\\n)*[^\n]*", "", p.read_text()))
            assert not re.search(names, text), f"{p.name} calls into {file}: its mutants must run every part"
    return list(HEADER_PARTS[file])


def _mutants(tmp: Path) -> list[tuple[str, Path, list[str]]]:
    """(description, kernel dir, driver parts to check) per mutant: each barrier site removed, then all."""
    src = _cpu_shim.kernel_dir()
    sites = kb.barrier_sites()
    assert sites, "no barrier found in the kernel sources: the mutation test would test nothing"
    out = []

    def make(name: str, chosen: list[tuple[str, int, str]]) -> Path:
        d = tmp / name
        shutil.copytree(src, d, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
        for file, line, call in chosen:
            lines = (d / file).read_text().split("\n")
            assert call in lines[line - 1]
            lines[line - 1] = lines[line - 1].replace(call, "((void)0)", 1)
            (d / file).write_text("\n".join(lines))
        kept = []
        for p in d.iterdir():
            if p.suffix in (".cu", ".cuh"):
                text = p.read_text()
                kept += [m.group(0) for m in _ENTRIES.finditer(text) if m.group(1) == "f32"]
                p.write_text(_ENTRIES.sub(lambda m: m.group(0) if m.group(1) == "f32" else "", text))
        assert len(kept) >= 3, f"expected the f32 entries of window_attn.cu, the tiled and the band kernels: {kept}"
        return d

    for i, (file, line, call) in enumerate(sites):
        out.append((f"{file}:{line} {call} removed", make(f"m{i}", [(file, line, call)]), _parts(file, src)))
    out.append((f"all {len(sites)} barriers removed", make("all", sites), list(PARTS)))
    return out


def test_weak_memory_mode_runs_every_kernel_and_barrier_mutants_fail(tmp_path, capsys, request):
    # Build first, here: a compile error shows as itself, and the subprocesses find the cached builds. The fork
    # servers import meanwhile; the builds run side by side (two g++ processes).
    servers = {v: _server(v, tmp_path) for v in VARIANTS}
    request.addfinalizer(lambda: [srv.kill() for srv in servers.values() if srv.poll() is None])  # on a failure
    with ThreadPoolExecutor(len(VARIANTS) * len(FAMILIES)) as pool:
        for lib in [pool.submit(_cpu_shim.build, fam, v, kb.CPU_DEFINES[v]) for v in VARIANTS for fam in FAMILIES]:
            lib.result()
    mutants = _mutants(tmp_path)
    todo = [(f"unmutated, {v}, seed {seed}", v, "", list(PARTS), seed)
            for v in VARIANTS for seed in ((1, 2) if v == "weak" else (1,))]
    todo += [(name, v, str(kdir), parts, 1) for name, kdir, parts in mutants for v in VARIANTS]
    done: dict[tuple[str, str], str] = {}
    sel = selectors.DefaultSelector()
    for v, srv in servers.items():
        sel.register(srv.stdout, selectors.EVENT_READ, v)
    running: dict[str, tuple[str, str, Path]] = {}
    buf = dict.fromkeys(VARIANTS, b"")
    # One parallel batch; each mutant build is its own g++ run, so at most a few at once.
    while todo or running:
        while todo and len(running) < max(3, os.cpu_count() or 2):
            name, v, kdir, parts, seed = todo.pop(0)
            jid, log = str(len(todo)), tmp_path / f"job{len(todo)}.log"
            servers[v].stdin.write((json.dumps([jid, kdir, parts, seed, str(log)]) + "\n").encode())
            servers[v].stdin.flush()
            running[jid] = (name, v, log)
        events = sel.select(timeout=600)
        assert events, f"no check ended in 600 s: {[name for name, _, _ in running.values()]}"
        for key, _ in events:
            v = key.data
            chunk = os.read(key.fileobj.fileno(), 1 << 16)
            assert chunk, f"the {v} fork server died:\n{(tmp_path / f'server-{v}.log').read_text()[-3000:]}"
            buf[v] += chunk
            while b"\n" in buf[v]:
                line, buf[v] = buf[v].split(b"\n", 1)
                jid, rc = line.decode().split()
                name, _, log = running.pop(jid)
                out = log.read_text()
                done[(name, v)] = _how(int(rc), out) if int(rc) else "pass"
                if name.startswith("unmutated"):
                    assert int(rc) == 0 and out.strip().endswith("ok"), f"{name}: {done[(name, v)]}\n{out[-3000:]}"
    for srv in servers.values():
        srv.stdin.close()
        assert srv.wait(timeout=60) == 0
    table = [f"{name:<34} " + " | ".join(f"{v}: {done[(name, v)]}" for v in VARIANTS) for name, _, _ in mutants]
    with capsys.disabled():
        print("\nbarrier mutants:\n  " + "\n  ".join(table))
    survivors = [name for name, _, _ in mutants if all(done[(name, v)] == "pass" for v in VARIANTS)]
    assert not survivors, f"mutants not caught: {survivors}"
