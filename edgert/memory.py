"""Sizes a user asked for, checked against the memory available before anything is allocated."""

from __future__ import annotations

from edgert.errors import EdgertError, OptionError
from edgert.session import _megabytes, available_memory_bytes


def check_memory(needed: int, what: str, *, advice: str = "", error: type[EdgertError] = OptionError) -> None:
    """`error` ("`what` needs N GiB; M GiB of memory is available (advice)") when `needed` bytes
    exceed the memory available now; no check where the OS does not say (non-Linux)."""
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise error(f"{what} needs {_megabytes(needed)}; {_megabytes(available)} of memory is available"
                    + (f" ({advice})" if advice else ""))
