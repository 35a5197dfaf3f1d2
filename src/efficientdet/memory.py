"""Process-level allocator tuning for CPU work with large tensors (glibc malloc on Linux).

glibc serves every allocation above its mmap threshold (at most 32 MB by default) with a fresh
``mmap`` and gives it back with ``munmap`` on free. A D0 training batch has many activations of
25-100 MB, so each one is page-faulted in from zero again on every step: on the 2-core machine a
100 MB copy takes ~25 ms that way and ~5 ms from reused memory, and BatchNorm, SiLU and their
backward passes are dominated by it. :func:`tune_malloc` raises the mmap threshold to 1 GiB and
the trim threshold to 2 GiB, so freed blocks stay in the heap and are reused, as a caching
allocator would do. The command-line tool calls it at start-up; set ``EFFICIENTDET_MALLOC_TUNING=0``
to leave the allocator alone. Peak memory is unchanged (measured in BENCHMARKS.md); the process
just keeps its peak until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def tune_malloc(mmap_threshold: int = 1 << 30, trim_threshold: int = 2 << 30) -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring). Returns whether they were set.

    No-op (``False``) off Linux/glibc, when ``EFFICIENTDET_MALLOC_TUNING=0``, or on a second call.
    """
    global _done
    if _done or not sys.platform.startswith("linux") or os.environ.get("EFFICIENTDET_MALLOC_TUNING") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # the trim threshold first: a heap top above it is given back to the OS, defeating the reuse
    ok = bool(mallopt(_M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)))
    ok = bool(mallopt(_M_MMAP_THRESHOLD, min(mmap_threshold, 2**31 - 1))) and ok
    _done = ok
    return ok
