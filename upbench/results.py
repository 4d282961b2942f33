"""Results: tidy rows → a pandas DataFrame, written atomically as CSV and JSON into a run directory.

``results.json`` is the file of record: ``{"schema": N, "meta": {…, "env": {…}}, "rows": [...]}``. The CSV
beside it holds the same rows for spreadsheets. Both are written once, when a run ends (rundir.py streams
the rows while it runs), atomically (temporary file in the same directory, fsync, rename), so a crash
leaves no half file. A run that never wrote them (still running, or killed) is read from its stream.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import UsageError
from .metrics import NAMES
from .rundir import clean, read_rows, read_start, state

SCHEMA = 1
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
LEGACY = ("layout",)  # columns of older runs that no longer carry information (layout was always nchw)


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; results are shared like figures (0644 by umask)
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for name in NAMES:
        if name not in df.columns:
            df[name] = None
    df = df.drop(columns=[c for c in LEGACY if c in df.columns])
    extra = [c for c in df.columns if c not in NAMES]
    return df[list(NAMES) + extra]


def write_run(run_dir: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    doc = {"schema": SCHEMA, "meta": meta, "rows": [{k: clean(v) for k, v in r.items()} for r in rows]}
    atomic_write(run_dir / RESULTS_JSON, json.dumps(doc, indent=1, default=str) + "\n")
    buf = io.StringIO()
    to_frame(rows).to_csv(buf, index=False)
    atomic_write(run_dir / RESULTS_CSV, buf.getvalue())


def device_classes(df: pd.DataFrame, meta: dict[str, Any]) -> set[str]:
    """Device classes of a run's rows: recorded per row (a run may span GPU models), else from its env."""
    if "device_class" in df and df["device_class"].notna().all():
        return set(df["device_class"])
    from .env import device_class

    return {device_class(d, meta.get("env", {})) for d in df["device"].dropna().unique()}


def load_run(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a run directory or results.json; one clear UsageError for anything that is not one."""
    p = Path(path)
    f = p / RESULTS_JSON if p.is_dir() else p
    where = f"results {path}"
    if not f.is_file() and p.is_dir() and read_start(p) is not None:
        return _from_stream(p)
    if not f.is_file():
        raise UsageError(where, f"no {RESULTS_JSON} here", "give a run directory written by `upbench run`")
    try:
        doc = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(where, f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or "schema" not in doc or not isinstance(doc.get("rows"), list):
        raise UsageError(where, "not an upbench results file (no schema/rows)")
    if doc["schema"] != SCHEMA:
        raise UsageError(where, f"schema {doc['schema']} but this upbench reads schema {SCHEMA}",
                         "re-run the suite with this version, or use the upbench version that wrote it")
    rows = [{k: (math.inf if v == "inf" else v) for k, v in r.items()} for r in doc["rows"]]
    return to_frame(rows), doc.get("meta", {})


def _from_stream(run_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A run that has not written its final files: what it streamed, its status says running or dead."""
    meta = dict(read_start(run_dir) or {})
    rows = read_rows(run_dir)
    live = state(run_dir)
    meta["status"] = "running" if live == "running" else "dead"
    if meta["status"] == "dead":
        meta["note"] = (f"the run's process ended without finishing after {len(rows)} of {meta.get('cells', '?')} "
                        f"cells; continue it with `upbench run --resume {run_dir}`")
    order = {cid: i for i, cid in enumerate(meta.get("cell_ids", []))}
    rows.sort(key=lambda r: order.get(r.get("cell_id"), len(order)))
    return to_frame([{k: (math.inf if v == "inf" else v) for k, v in r.items()} for r in rows]), meta
