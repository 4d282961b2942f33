"""Optional imports (cupy, pynvml) in one place, each remembering why it failed.

``import upbench`` must work on a machine without a GPU, CuPy or NVML; callers ask ``try_cupy()`` and, on
None, show ``cupy_reason()`` to the user.
"""

from __future__ import annotations

import importlib
from functools import cache
from types import ModuleType

_REASONS: dict[str, str] = {}


@cache
def _try(name: str, hint: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except Exception as exc:  # ImportError, or a CUDA library that fails at import time
        _REASONS[name] = f"{name} is not importable ({type(exc).__name__}: {exc}); {hint}"
        return None


def try_cupy() -> ModuleType | None:
    return _try("cupy", "pip install 'upbench[cuda]' (cupy-cuda13x)")


def cupy_reason() -> str:
    return "" if try_cupy() is not None else _REASONS["cupy"]


def try_pynvml() -> ModuleType | None:
    return _try("pynvml", "pip install nvidia-ml-py")


def pynvml_reason() -> str:
    return "" if try_pynvml() is not None else _REASONS["pynvml"]


_HINTS = {"cupy": "pip install 'upbench[cuda]' (cupy-cuda13x)", "pynvml": "pip install nvidia-ml-py"}


def reason(name: str) -> str | None:
    """Why optional module ``name`` cannot be imported, or None when it can."""
    return None if _try(name, _HINTS.get(name, f"pip install {name}")) is not None else _REASONS[name]


def require(name: str) -> ModuleType:
    """The optional module, or ImportError carrying the remembered reason."""
    mod = _try(name, _HINTS.get(name, f"pip install {name}"))
    if mod is None:
        raise ImportError(_REASONS[name])
    return mod
