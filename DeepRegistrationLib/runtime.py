"""Process-wide settings for a process that only registers (the ``deepreg`` command, the Slicer panel's
background process): keep freed memory for reuse instead of returning it to the operating system.

glibc serves every allocation above 32 MB (its largest adaptive mmap threshold) with a fresh ``mmap`` and gives
it back with ``munmap`` when freed, so each new large tensor (a 16-channel feature map on a network's grid is
55 MB, a 1 mm brain volume 27 MB and up) is paid for again in page faults while the kernel zeroes its pages.
On this project's 2-core CI-class virtual machine that kernel time varies between hours and reached a third of
the wall time: 26 forward passes of the bundled VoxelMorph model in a fresh process (beside another
benchmark) took 79 s of wall time with 21 s in the kernel, against 57 s with 0.9 s in the kernel with the
setting below, for about 25 % more peak resident memory.

:func:`retain_freed_memory` sets ``M_MMAP_MAX = 0`` (large blocks come from the heap, which the process reuses)
and ``M_TRIM_THRESHOLD`` to its maximum (freed heap stays with the process). It is called by the command line
entry points only, never on import: inside the Slicer application the library leaves Slicer's allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["retain_freed_memory", "peak_resident_gb"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def retain_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed memory in the process (see the module docstring). Returns whether
    it took effect (False where the C library is not glibc, e.g. macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def peak_resident_gb() -> float | None:
    """The process's peak resident memory so far, in GB: ``VmHWM`` on Linux (reset by exec, unlike
    ``ru_maxrss``, which a child started by fork + exec inherits from its parent), else ``getrusage``; None
    where neither is available (Windows)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**3 if sys.platform == "darwin" else peak / 1024**2  # bytes on macOS, KiB on Linux
