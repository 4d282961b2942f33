"""``upbench merge``: join the shards of one sweep into one run directory that report and compare accept.

Refused (exit 2) when the shards come from different suites, axis values, upbench versions or code (an
impl's hash differs between shards); reported
(exit 1, nothing written) when a shard or a cell is missing or a cell appears twice.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .errors import UsageError
from .results import RESULTS_JSON, load_run, write_run


def _describe(meta: dict[str, Any]) -> tuple[Any, ...]:
    s = meta.get("suite", {})
    return s.get("name"), s.get("fingerprint"), meta.get("upbench"), (meta.get("shard") or {}).get("count")


def merge(paths: list[Path], out: Path, force: bool = False) -> int:
    if (out / RESULTS_JSON).exists() and not force:
        raise UsageError(f"--out {out}", "already holds results", "choose another directory or add --force")
    loaded = [(p, *load_run(p)) for p in paths]
    first = _describe(loaded[0][2])
    for p, _, meta in loaded:
        if not meta.get("shard"):
            raise UsageError(f"merge {p}", "is not a shard (run without --shard)")
        if _describe(meta) != first:
            name, fp, ver, n = _describe(meta)
            raise UsageError(f"merge {p}", f"suite {name} / sweep {fp} / upbench {ver} / {n} shards differs from "
                             f"{loaded[0][0]}'s {first[0]} / {first[1]} / {first[2]} / {first[3]}",
                             "merge shards of one `upbench run` command")
    count = first[3]
    problems: list[str] = []
    seen_shards = [m["shard"]["index"] for _, _, m in loaded]
    missing_shards = sorted(set(range(count)) - set(seen_shards))
    dup_shards = sorted({i for i in seen_shards if seen_shards.count(i) > 1})
    if missing_shards:
        problems.append(f"missing shard(s) {missing_shards} of {count}")
    if dup_shards:
        problems.append(f"shard(s) {dup_shards} given twice")
    _refuse_mixed_code(loaded)
    rows: list[dict[str, Any]] = []
    owner: dict[str, Path] = {}
    for p, df, meta in loaded:
        expected = set(meta["shard"]["cells"])
        got = list(df["cell_id"])
        lost = expected - set(got)
        if lost or meta.get("status") != "complete":
            problems.append(f"{p}: {len(lost)} of {len(expected)} cells missing (status {meta.get('status')})")
        for cid, rec in zip(got, df.to_dict("records"), strict=True):
            if cid in owner:
                problems.append(f"cell {cid} is in both {owner[cid]} and {p}")
                continue
            owner[cid] = p
            rows.append(rec)
    if problems:
        for msg in problems:
            print(f"upbench: merge: {msg}", file=sys.stderr)
        print(f"upbench: merge refused: {len(problems)} problem(s); nothing written", file=sys.stderr)
        return 1
    meta = dict(loaded[0][2])
    meta.update(status="complete", shard=None, cells=len(rows),
                shards=[{"path": str(p), "index": m["shard"]["index"], "command": m.get("command"),
                         "env": m.get("env"), "elapsed_s": m.get("elapsed_s")} for p, _, m in loaded],
                command=" ; ".join(m.get("command", "?") for _, _, m in loaded))
    order = {cid: i for i, cid in enumerate(sorted(owner, key=lambda c: _position(c, loaded)))}
    rows.sort(key=lambda r: order[r["cell_id"]])
    meta["cell_ids"] = [r["cell_id"] for r in rows]  # the whole sweep's, not the first shard's
    meta.pop("request", None)  # each shard's own settings stay under "shards"; a merge is not resumable
    write_run(out, rows, meta)
    print(f"upbench: merged {len(loaded)} shards, {len(rows)} cells into {out}", file=sys.stderr)
    return 0


def _refuse_mixed_code(loaded: list[tuple[Path, Any, dict[str, Any]]]) -> None:
    """Shards of one sweep must have run the same code: one impl hash per op/impl across every shard."""
    seen: dict[tuple[str, str], tuple[str, Path]] = {}
    for p, df, _ in loaded:
        if "impl_hash" not in df:
            continue
        for op, impl, h in zip(df["op"], df["impl"], df["impl_hash"], strict=True):
            if not isinstance(h, str):
                continue
            first = seen.setdefault((op, impl), (h, p))
            if first[0] != h:
                raise UsageError(f"merge {p}", f"{op}/{impl} ran code {h} but {first[1]} ran {first[0]}",
                                 "re-run the shards from one checkout")


def _position(cid: str, loaded: list[tuple[Path, Any, dict[str, Any]]]) -> int:
    """Index in the full sweep: shard i holds cells i, i+n, i+2n, … (execute.shard)."""
    for _, _, m in loaded:
        cells = m["shard"]["cells"]
        if cid in cells:
            return m["shard"]["index"] + cells.index(cid) * m["shard"]["count"]
    return 1 << 62
