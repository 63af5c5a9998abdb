"""Give freed memory back to the operating system (glibc), so a burst of large requests does not leave a
service's resident size at its peak: glibc keeps freed heap memory for reuse, and its dynamic mmap
threshold rises after the first large free, so later large buffers come from the heap too."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3  # mallopt parameter numbers from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 256 * 1024  # buffers at least this big are mapped alone and unmapped when freed


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


class MemoryReturner:
    """Fix glibc's mmap threshold at start, then trim the heap every `interval_s` (a no-op off glibc)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._libc = _libc()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._libc is None:
            log.info("not glibc: freed memory stays with the allocator")
            return
        self._libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        self._task = asyncio.create_task(self._trim_forever(), name="memory-returner")

    async def _trim_forever(self) -> None:
        assert self._libc is not None
        while True:
            await asyncio.sleep(self.interval_s)
            self._libc.malloc_trim(0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
