"""Output paths checked before anything is measured or written: ``--out`` of run, report, compare, merge.

A directory that is a file, lies under a file, or cannot be created or written is one usage error up
front, not a traceback after the first cell was measured.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UsageError


def _existing_parent(path: Path) -> Path:
    p = path.absolute()
    while not p.exists():
        p = p.parent
    return p


def check_dir(path: Path, where: str) -> None:
    """``path`` is, or can be created as, a writable directory."""
    if path.exists() and not path.is_dir():
        raise UsageError(where, "is a file, not a directory", "give a directory path")
    base = _existing_parent(path)
    if not base.is_dir():
        raise UsageError(where, f"lies under the file {base}", "give a path under a directory")
    try:  # os.access says yes to root on any mode; a probe file (gone at once) asks the file system itself
        if not os.access(base, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        tempfile.TemporaryFile(dir=base).close()
    except OSError as exc:
        raise UsageError(where, f"{base} is not writable ({exc.strerror})",
                         "choose a directory you can write to") from None


def check_file(path: Path, where: str) -> None:
    """``path`` is, or can be created as, a writable file."""
    if path.is_dir():
        raise UsageError(where, "is a directory", "give a file path, e.g. report.md")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(where, "is not writable")
    base = _existing_parent(path.parent)
    if not base.is_dir():
        raise UsageError(where, f"lies under the file {base}", "give a path under a directory")
    check_dir(path.parent, where)
