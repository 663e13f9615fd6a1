"""Facts about the machine that benchmarks print beside their figures."""

from __future__ import annotations

import platform


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or what platform reports elsewhere."""
    return _cpuinfo_field("model name") or platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    """Return the CPU feature flags from /proc/cpuinfo (such as aes and avx2), or an empty set."""
    return set((_cpuinfo_field("flags") or "").split())


def _cpuinfo_field(name: str) -> str | None:
    """Return the first CPU's value for name in /proc/cpuinfo, or None where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None
