"""GPU facts through NVML (nvidia-ml-py): name, driver, clocks, temperature, power, throttle reasons.

NVML numbers are device-wide: they fingerprint the machine and its state, they are never a per-op metric.
"""

from __future__ import annotations

from typing import Any

from ._optional import pynvml_reason, try_pynvml


def gpu_info() -> dict[str, Any]:
    """Every visible GPU, or ``{"devices": [], "reason": …}`` when there is none or NVML is missing."""
    nv = try_pynvml()
    if nv is None:
        return {"devices": [], "reason": pynvml_reason()}
    try:
        nv.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded on a GPU-less machine
        return {"devices": [], "reason": f"NVML unavailable: {exc}"}
    try:
        driver = nv.nvmlSystemGetDriverVersion()
        devices = [_device(nv, nv.nvmlDeviceGetHandleByIndex(i)) for i in range(nv.nvmlDeviceGetCount())]
        return {"driver": driver, "devices": devices} if devices else {"devices": [], "reason": "no GPU"}
    finally:
        nv.nvmlShutdown()


def _read(fn: Any, *args: Any) -> Any:
    try:
        v = fn(*args)
        return v.decode() if isinstance(v, bytes) else v
    except Exception as exc:
        return f"unavailable: {exc}"


def _device(nv: Any, h: Any) -> dict[str, Any]:
    return {
        "name": _read(nv.nvmlDeviceGetName, h),
        "sm_clock_mhz": _read(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM),
        "mem_clock_mhz": _read(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM),
        "max_sm_clock_mhz": _read(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_SM),
        "temperature_c": _read(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU),
        "power_w": (lambda p: p / 1000 if isinstance(p, int) else p)(_read(nv.nvmlDeviceGetPowerUsage, h)),
        "throttle_reasons": _read(nv.nvmlDeviceGetCurrentClocksEventReasons, h),
        "memory_total_bytes": (lambda m: getattr(m, "total", m))(_read(nv.nvmlDeviceGetMemoryInfo, h)),
    }
