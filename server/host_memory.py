"""How the process's C allocator treats the host memory that tensors free: kept for the next request.

glibc maps a block over its mmap threshold (dynamically at most 32 MiB) on its own and unmaps it when it is
freed, and gives the top of its heap back to the OS past its trim threshold, so a pipeline that allocates and
frees the same large tensors request after request faults their pages in again each time: a 1024 x 1024 image's
planes in float64 are 25-34 MB. Kept, the memory a request freed serves the next one, and the process holds its
peak, as PyTorch's CUDA caching allocator holds device memory. On the image2pixel timing images (2 torch threads),
the whole-process time of 12 `pixelate` calls fell by a median of 6 % on the main thread and 3 % on a worker
thread, and its system time from 1.6-1.9 s to 0.4-0.7 s.
"""

from __future__ import annotations

import ctypes

__all__ = ["RETAINED_BYTES", "retain_freed_memory"]

# Blocks up to this size come from the heap, and up to this much free memory stays at its top: above the
# largest tensor of a 16-megapixel image in float32 planes (256 MB), below what a GPU host misses.
RETAINED_BYTES = 1 << 30
# `mallopt`'s parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def retain_freed_memory(limit: int = RETAINED_BYTES) -> bool:
    """Keeps freed blocks of up to ``limit`` bytes, and up to ``limit`` free bytes at the top of the heap, in the
    process for reuse. Whether it took: False where the C library has no glibc `mallopt` (musl's ignores it,
    macOS has none), which leaves the allocator as it was."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))
