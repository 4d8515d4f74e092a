"""CPU training memory: keep freed memory in the process for the next step (glibc malloc).

glibc serves a block above its mmap threshold (128 KiB at first, growing to at most 32 MiB as
such blocks are freed) with a fresh `mmap` and gives it back with `munmap`; the kernel zeroes the
pages again at their first touch in the next step. A training step allocates the same large
activations every time, so on the CPU each step pays those page faults; an SSIR step keeps two or
three graphs alive and pays them for all of them (the small CNN of
`benchmarks/bench_ssir_step.py`, batch 128: 15.7k minor faults per exact SSIR step under
torch 2.13, 2k with freed memory kept; the step costs 3.85x a plain one instead of 3.25x). `keep_freed_memory` serves blocks up to 32 MiB from the heap and never trims
it: the same as `MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647`, or a
caching allocator such as jemalloc or tcmalloc. `ssir-fast train` on the CPU calls it; a
library user calls it once before training. The cost is memory held by the process between
steps (the peak of one step, as a caching allocator holds).
"""
import ctypes
import ctypes.util

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameters (malloc.h)
_done = None


def keep_freed_memory(mmap_threshold=32 << 20):
    """Ask glibc's malloc to serve blocks below `mmap_threshold` bytes (at most 32 MiB, glibc's
    limit) from the heap and to keep freed heap memory (`mallopt`). Returns True when it took,
    False where the C library is not glibc (macOS, musl, Windows: nothing changes). Process-wide
    and idempotent."""
    global _done
    if _done is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            _done = False
            return _done
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        _done = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and \
            bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _done
