"""upbench: reproducible benchmarks of feature-upsampling operators."""

from pathlib import Path as _Path


def _checkout_path() -> list[str]:
    """In a source checkout, the folders pyproject.toml's package map puts inside ``upbench``.

    operators/, kernels/ and suites/ sit beside upbench/ in the repository; packaging maps them to
    upbench.operators etc. Reading the same map lets a checkout import like the installed wheel. Never in
    site-packages: only where the repository's pyproject.toml stands beside this package.
    """
    import tomllib

    here = _Path(__file__).resolve().parent
    try:
        project = tomllib.loads((here.parent / "pyproject.toml").read_text())
    except (OSError, ValueError):
        return []
    dirs = project.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    if dirs.get("upbench") != here.name:  # another project's pyproject.toml
        return []
    parents = {str((here.parent / d).parent) for name, d in dirs.items()
               if name.startswith("upbench.") and not (here / name.removeprefix("upbench.")).exists()
               and (here.parent / d).is_dir()}
    return sorted(parents)


__path__.extend(p for p in _checkout_path() if p not in __path__)  # type: ignore[name-defined]  # noqa: F821

from .cases import Case  # noqa: E402
from .errors import UsageError  # noqa: E402
from .plugin import HyperParam, Impl, Operator  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Case", "HyperParam", "Impl", "Operator", "UsageError", "__version__"]
