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


# Clock-event reasons that mean the clocks were pulled down by the hardware while we measured (not idle,
# not an application-clock setting): power cap, thermal slowdown, hardware slowdown, power brake.
_THROTTLE_BITS = {0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x20: "sw_thermal", 0x40: "hw_thermal",
                  0x80: "hw_power_brake"}


def throttle_snapshot(device: str) -> dict[str, Any] | None:
    """Clock-event reasons, SM clock and power/thermal violation counters of the current GPU, or None."""
    if device != "cuda":
        return None
    nv = try_pynvml()
    if nv is None:
        return None
    try:
        import torch

        nv.nvmlInit()
        h = nv.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        snap = {"reasons": nv.nvmlDeviceGetCurrentClocksEventReasons(h),
                "sm_clock_mhz": nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)}
        for name, pol in (("power_violation_ns", nv.NVML_PERF_POLICY_POWER),
                          ("thermal_violation_ns", nv.NVML_PERF_POLICY_THERMAL)):
            try:
                snap[name] = nv.nvmlDeviceGetViolationStatus(h, pol).violationTime
            except Exception:
                snap[name] = None
        nv.nvmlShutdown()
        return snap
    except Exception:
        return None


def throttle_events(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """Row columns: whether the GPU throttled between two snapshots, and why ("" when it did not)."""
    if before is None or after is None:
        return {}
    reasons = {n for bit, n in _THROTTLE_BITS.items() if (before["reasons"] | after["reasons"]) & bit}
    for key in ("power_violation_ns", "thermal_violation_ns"):
        if before.get(key) is not None and after.get(key) is not None and after[key] > before[key]:
            reasons.add(key.removesuffix("_ns"))
    return {"throttled": bool(reasons), "throttle_reasons": ",".join(sorted(reasons)),
            "sm_clock_mhz": after["sm_clock_mhz"]}
