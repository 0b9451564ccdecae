"""glibc malloc settings that keep the serving process's memory at what it really holds.

Two glibc defaults make a server's RSS drift far above its live data under a
burst of large, short-lived buffers (uploads, protobuf copies, parsed contexts):

- **arenas**: every thread that allocates gets its own arena (up to 8 × cores),
  and each keeps its freed memory; capped to :data:`MALLOC_ARENAS`;
- **the dynamic mmap threshold**: a freed ``mmap``-ed block raises the threshold
  to its size (up to 32 MiB), so later buffers of a few MB come from the arenas,
  where SEAL's never-freed memory-pool blocks pin them and freed space is never
  returned. Fixing the threshold (:data:`MMAP_THRESHOLD_BYTES`) keeps every large
  buffer ``mmap``-ed, and ``free`` hands it back to the OS at once.

Measured with ``python -m bench.reliability`` (BENCHMARKS.md, "Reliability").
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: glibc malloc arenas for the whole process
MALLOC_ARENAS = 2
#: allocations at least this large are mmap-ed and returned to the OS when freed
MMAP_THRESHOLD_BYTES = 128 * 1024
# glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_malloc(
    arenas: int = MALLOC_ARENAS, mmap_threshold: int = MMAP_THRESHOLD_BYTES
) -> bool:
    """Apply both settings (as ``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` would).

    Call before the server's threads start allocating. False where the C
    library is not glibc (nothing changes there).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, arenas)) and bool(
            libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        )
    except (OSError, AttributeError):
        return False
