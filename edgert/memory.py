"""This process's and this machine's memory: resident set (current and peak), the memory
available to allocate (and sizes a user asked for, checked against it before anything is
allocated), and byte counts as people read them. Linux reads /proc; elsewhere
the figures are unknown (0 or None) except the peak, which getrusage gives on Unix.
"""

from __future__ import annotations

import sys

from edgert.errors import EdgertError, OptionError

try:
    import resource  # Unix only
except ImportError:  # Windows: no peak RSS figure
    resource = None


def proc_status_bytes(key: str) -> int | None:
    """A size line of /proc/self/status (VmRSS, VmHWM, ...) in bytes; None where unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_mb() -> float:
    """Current resident set size of this process in MiB (0 where unknown)."""
    return (proc_status_bytes("VmRSS") or 0) / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size since the last reset_peak_rss(), in MiB."""
    peak = proc_status_bytes("VmHWM")
    if peak:
        return peak / 2**20
    if resource is None:
        return 0.0
    # not Linux: the whole process's peak, which cannot be reset (bytes on macOS, KiB elsewhere)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux; no-op elsewhere)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux): what can be allocated without swapping; None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def format_bytes(size: int) -> str:
    """A byte count in GiB, MiB or KiB with one decimal, or in bytes below 1 KiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def check_memory(needed: int, what: str, *, advice: str = "", error: type[EdgertError] = OptionError) -> None:
    """`error` ("`what` needs N GiB; M GiB of memory is available (advice)") when `needed` bytes
    exceed the memory available now; no check where the OS does not say (non-Linux)."""
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise error(f"{what} needs {format_bytes(needed)}; {format_bytes(available)} of memory is available"
                    + (f" ({advice})" if advice else ""))
