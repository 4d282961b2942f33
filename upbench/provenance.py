"""Which code produced a row: :func:`impl_hash`, a hash of an impl's whole source closure.

The closure is the operator class's module, the impl factory's module, every file the impl declares in
``Impl.sources`` (its binding module, the ``.cu``/``.cuh`` files it compiles) and the impl's name, so each
impl of an operator has its own hash and editing a kernel changes exactly the hashes of the impls that list
it. Files are hashed by content, never by path: the same code installed elsewhere gives the same hash.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

from .plugin import Impl, Operator


def _file_digest(path: str | Path) -> str:
    p = Path(path)
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError:
        return f"missing:{p.name}"  # a declared source that is not there still changes the hash, visibly


def closure(op: Operator, impl: Impl) -> list[str]:
    """The files whose content identifies ``impl``: operator module, factory module, declared sources."""
    paths = {inspect.getsourcefile(type(op)), inspect.getsourcefile(impl.factory), *map(str, impl.sources)}
    return sorted(str(Path(p).resolve()) for p in paths if p)


def impl_hash(op: Operator, impl: Impl) -> str:
    """12 hex digits of sha256 over the content of :func:`closure` (sorted) and the impl's name."""
    h = hashlib.sha256()
    for digest in sorted(_file_digest(p) for p in closure(op, impl)):
        h.update(digest.encode())
    h.update(b"\0impl:" + impl.name.encode())
    return h.hexdigest()[:12]


def impl_hashes(pairs: set[tuple[str, str]]) -> dict[str, str]:
    """``{"op/impl": hash}`` for registered operators' impls: what a run records once in its metadata."""
    from . import registry

    out = {}
    for op_name, impl_name in sorted(pairs):
        op = registry.get(op_name)
        out[f"{op_name}/{impl_name}"] = impl_hash(op, op.impl(impl_name))
    return out
