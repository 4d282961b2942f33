"""upbench: reproducible benchmarks of feature-upsampling operators."""

from pathlib import Path as _Path

# In a source checkout (not installed, or a subprocess whose cwd is the checkout), operators/, kernels/ and
# suites/ sit beside upbench/ instead of inside it; packaging maps them to upbench.operators etc. Let the
# package's search path reach them so the checkout imports like the wheel. Never in site-packages: only where
# the repository's pyproject.toml stands beside us.
_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "operators" / "sapa_core.py").is_file() \
        and not (_Path(__file__).parent / "operators").exists():
    __path__.append(str(_root))  # type: ignore[name-defined]  # noqa: F821

from .cases import Case  # noqa: E402
from .errors import UsageError  # noqa: E402
from .plugin import HyperParam, Impl, Operator  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Case", "HyperParam", "Impl", "Operator", "UsageError", "__version__"]
