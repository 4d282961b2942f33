"""upbench: reproducible benchmarks of feature-upsampling operators."""

from .cases import Case
from .errors import UsageError
from .plugin import HyperParam, Impl, Operator

__version__ = "0.1.0"
__all__ = ["Case", "HyperParam", "Impl", "Operator", "UsageError", "__version__"]
