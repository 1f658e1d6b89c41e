"""The C allocator tuned for HBONE's megabyte buffers (process-wide; glibc only, a no-op elsewhere).

glibc serves allocations above its mmap threshold (128 KiB, then adapting) with a fresh mmap and returns
them with munmap on free: every 1 MiB DATA frame and TLS output buffer then touched new pages, and page
faults plus zeroing were ~20% of a node proxy's CPU in a bulk transfer (perf; docs/performance.md). With
the threshold above the frame size freed buffers are reused (+40% single-stream throughput through the
mesh in an A/B). Memory is still handed back: by glibc above HEAP_TRIM_THRESHOLD of free heap top, and
by the node proxy's relay census after a burst of connections.

Invariant: called once at process start by the node proxy and the waypoint; changes no behaviour, only
where the allocator gets memory from.
"""

from __future__ import annotations

import ctypes

MMAP_THRESHOLD = 4 * 1024 * 1024  # allocations below this come from the reusable heap, not fresh mmaps
HEAP_TRIM_THRESHOLD = 64 * 1024 * 1024  # free heap top kept before glibc gives it back on its own
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def tune_allocator() -> bool:
    """Keep megabyte buffers on the heap; True when glibc took both settings."""
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        return ok and libc.mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        return False
