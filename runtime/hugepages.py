"""Block weights on 2 MiB pages.

A sparse matvec reads each selected input's row as its own short stream: on 4 KiB pages most of
those rows cost a TLB miss and a page walk, and the hardware prefetchers stop at every page edge.
The file's pages cannot be mapped huge here (file-backed THP needs a filesystem and kernel that
offer it; MADV_COLLAPSE refuses these mappings), so at load the block weights are read into one
anonymous mapping, and a background thread then collapses it onto transparent huge pages
(madvise MADV_COLLAPSE, Linux 6.1+), as it does the repacked head (lr_model_head8).

Why in the background: the kernel may have to compact memory to find 2 MiB of contiguous pages
(THP "defrag"); on a machine whose memory is full of page cache that took 1-2 s for 800 MB here,
which would all land on the time to the first token. The collapse keeps the addresses and the
bytes, so decoding goes on meanwhile, on 4 KiB pages until each range is done.

Measured on Zen 4 (BENCHMARKS.md): a plain reader of random 3-9 KiB rows, 40 % kept, 15.0-15.5 ->
17.7-18.6 GB/s; every row, 16.9-18.2 -> 19.0-19.2 GB/s. LAROSA_HUGEPAGES=0, or a copy that would take more than half
the available memory (fits), reads the weights from the file mapping as before (same bits).
"""
from __future__ import annotations

import ctypes
import mmap
import os
import threading

import numpy as np

HUGE = 2 << 20
MADV_COLLAPSE = 25   # linux/mman.h (Linux 6.1); Python's mmap module may not name it
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def available() -> bool:
    """True on Linux with transparent huge pages not "never"; LAROSA_HUGEPAGES=0 says no."""
    if os.environ.get("LAROSA_HUGEPAGES", "1") == "0" or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        with open(_THP) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def fits(nbytes: int) -> bool:
    """True when a copy of nbytes takes at most half of the memory the kernel calls available
    (MemAvailable): a copy can't be evicted as the file's pages can, so a model that barely fits
    keeps reading from its mapping."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return nbytes <= int(line.split()[1]) * 1024 // 2
    except (OSError, ValueError, IndexError):
        pass
    return False


class Arena:
    """One private anonymous mapping of `nbytes` (rounded up to 2 MiB) starting on a 2 MiB edge.
    `place` reads a tensor's bytes from the file into the next 64-byte-aligned slot."""

    def __init__(self, nbytes: int):
        size = -(-nbytes // HUGE) * HUGE
        # private: shared anonymous memory is shmem, which THP "madvise" does not cover;
        # the slack lets the used part start on a 2 MiB edge
        self._mm = mmap.mmap(-1, size + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        base = np.frombuffer(self._mm, dtype=np.uint8)
        start = (-base.ctypes.data) % HUGE
        # no MADV_HUGEPAGE here: the reads would then fault 2 MiB pages in, compacting memory in
        # the foreground; they fault 4 KiB pages, and the Collapser moves them later
        self.buf = base[start:start + size]
        self.address = base.ctypes.data + start
        self._used = 0

    def place(self, fd: int, offset: int, nbytes: int) -> np.ndarray:
        """Reads nbytes at `offset` of the open file fd into the next slot and returns the slot
        (pread copies from the page cache without mapping the file's pages in this process)."""
        if self._used + nbytes > self.buf.nbytes:
            raise ValueError(f"arena of {self.buf.nbytes} bytes cannot hold {nbytes} more")
        out = self.buf[self._used:self._used + nbytes]
        view, done = memoryview(out), 0
        while done < nbytes:
            n = os.preadv(fd, [view[done:]], offset + done)
            if n <= 0:
                raise OSError(f"short read at byte {offset + done}")
            done += n
        self._used = -(-(self._used + nbytes) // 64) * 64
        return out


class Collapser:
    """Collapses [(address, nbytes)] regions (2 MiB-aligned) onto huge pages in a daemon thread,
    2 MiB at a time. wait() blocks until it is done; huge_bytes is what the kernel did collapse (0
    where it cannot). The owner of the memory calls stop() before freeing it."""

    def __init__(self, regions: list[tuple[int, int]]):
        self._regions = regions
        self.huge_bytes = 0
        self._done, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="larosa-hugepages", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            try:   # the lowest priority: the decoding threads keep their cores (Linux: per thread)
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            except (AttributeError, OSError):
                pass
            madvise = ctypes.CDLL(None, use_errno=True).madvise   # ctypes drops the GIL around it
            madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            for addr, n in self._regions:
                for a in range(addr, addr + n, HUGE):
                    if self._stop.is_set():
                        return
                    if madvise(a, HUGE, MADV_COLLAPSE) == 0:
                        self.huge_bytes += HUGE
                    elif ctypes.get_errno() == 22:   # EINVAL: this kernel has no MADV_COLLAPSE
                        return
        except (OSError, AttributeError):
            pass
        finally:
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def stop(self) -> None:
        """Ends the work after the 2 MiB range in progress and waits for the thread."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
