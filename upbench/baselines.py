"""Named baselines, stored under ``baselines/<device class>/<name>.json`` (a copy of a run's results.json).

Keying by device class (GPU name, or CPU model and thread count) keeps a baseline from an H100 from ever
being compared, by accident, with a run on an A100 or a laptop CPU.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import UsageError
from .results import RESULTS_JSON, atomic_write, device_classes, load_run

ROOT = Path("baselines")
PREFIX = "baseline:"


class MissingBaseline(UsageError):
    """baseline:NAME has no file for NEW's device class."""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def class_of(run: str | Path) -> str:
    df, meta = load_run(run)
    classes = sorted(device_classes(df, meta))
    if len(classes) != 1:
        raise UsageError(f"run {run}", f"spans {len(classes)} device classes {classes}",
                         "save one baseline per device class (run with one --device)")
    return classes[0]


def check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise UsageError(f"--save-baseline {name}", "names may use letters, digits, '.', '_' and '-'")


def save(run_dir: Path, name: str, root: Path = ROOT) -> Path:
    check_name(name)
    target = root / slug(class_of(run_dir)) / f"{name}.json"
    atomic_write(target, (run_dir / RESULTS_JSON).read_text())
    return target


def resolve(spec: str, new_run: str, root: Path = ROOT) -> str:
    """``baseline:NAME`` → the file of that name for NEW's device class; anything else is a path."""
    if not spec.startswith(PREFIX):
        return spec
    name = spec[len(PREFIX):]
    path = root / slug(class_of(new_run)) / f"{name}.json"
    if not path.is_file():
        have = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.json")) if root.is_dir() else []
        raise MissingBaseline(spec, f"no baseline {path}", f"saved baselines: {', '.join(have) or 'none'}")
    return str(path)
