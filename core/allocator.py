"""Keep the memory a forward pass frees in the process, for the next batch to reuse. Free of Django.

A forward pass allocates and frees tens of megabytes of activations per layer. By default glibc
hands each such block back to the operating system and maps fresh pages for the next, so every
batch page-faults its whole working set anew: the CPU forward pass ran 1.5 to 2 times slower
that way (docs/benchmarks.md). The cost is that the process keeps its peak working set resident.
"""
from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to serve large blocks from its heap and keep them when freed; False where it cannot."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        log.info("Not glibc: freed memory goes back to the system between batches")
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
