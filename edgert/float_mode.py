"""Denormals flushed to zero on the calling thread while edgert runs a graph, and only then.

ONNX Runtime's `session.set_denormal_as_zero` sets flush-to-zero and denormals-are-zero on its
pool threads per session, but on the calling thread only from the first session a process
creates, and then for good: the application's own numpy on that thread would flush denormals
too. The calling thread does a share of every run, so leaving it alone would leave that share
slow (a decoder's prefill ran several times slower). So edgert keeps the thread's mode as it
was when a session is created, and sets the flags around each run.

The standard library cannot reach the SSE control register (MXCSR) that holds these flags; on
x86-64 Linux, libm's fegetenv/fesetenv can: glibc's fenv_t is 32 bytes there, MXCSR its last
4. Elsewhere (or if libm is missing) the functions below do nothing and ONNX Runtime's own
behaviour applies.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
import sys
from collections.abc import Iterator

_FENV_WORDS = 8  # glibc x86-64 fenv_t: 28 bytes of x87 state, then the 4-byte MXCSR
_MXCSR = 7
_FLUSH_TO_ZERO, _DENORMALS_ARE_ZERO = 0x8000, 0x0040


def _libm():
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        env = (ctypes.c_uint32 * _FENV_WORDS)()
        if libm.fegetenv(env) != 0 or env[_MXCSR] & 0xFFFF0000:  # not an MXCSR where expected
            return None
    except (OSError, AttributeError):
        return None
    return libm


_LIBM = _libm()


def controlled() -> bool:
    """Whether this process can set and restore the calling thread's float mode."""
    return _LIBM is not None


@contextlib.contextmanager
def kept() -> Iterator[None]:
    """Restore the calling thread's float environment when the block ends (around creating an
    ONNX Runtime session, whose first one in a process may change it)."""
    if _LIBM is None:
        yield
        return
    saved = (ctypes.c_uint32 * _FENV_WORDS)()
    _LIBM.fegetenv(saved)
    try:
        yield
    finally:
        _LIBM.fesetenv(saved)


@contextlib.contextmanager
def denormals_flushed(on: bool = True) -> Iterator[None]:
    """Flush float32/64 denormals to zero on the calling thread inside the block (when `on`),
    then restore the thread's environment."""
    if not on or _LIBM is None:
        yield
        return
    saved = (ctypes.c_uint32 * _FENV_WORDS)()
    _LIBM.fegetenv(saved)
    flushed = (ctypes.c_uint32 * _FENV_WORDS)(*saved)
    flushed[_MXCSR] |= _FLUSH_TO_ZERO | _DENORMALS_ARE_ZERO
    _LIBM.fesetenv(flushed)
    try:
        yield
    finally:
        _LIBM.fesetenv(saved)
