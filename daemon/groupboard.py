"""The process groups of the running workers, on a board the sentinel reads when the
daemon is gone.

A memfd shared with the sentinel, one 8-byte slot per live worker: the daemon writes a
group into a free slot as its worker starts and zeroes it when the worker is gone, as
plain stores into a shared mapping — no system call, and no sentinel woken per item (a
pipe message per start and end cost a context switch each). Writes into a shared mapping
are in the page cache at once, so a daemon killed with -9 leaves its last word there; the
sentinel reads the whole board once, when its pipe from the daemon ends.
"""

from __future__ import annotations

import mmap
import os
import struct

SLOT = struct.Struct("q")
FIRST_SLOTS = 512  # doubled whenever every slot is taken


class GroupBoard:
    def __init__(self) -> None:
        self.fd = os.memfd_create("pipewarden-groups", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, FIRST_SLOTS * SLOT.size)
        self._map = mmap.mmap(self.fd, FIRST_SLOTS * SLOT.size)
        self._free = list(range(FIRST_SLOTS - 1, -1, -1))  # popped from the end: slot 0 first
        self._slots: dict[int, int] = {}  # worker (its id()) -> its slot

    def add(self, worker: object, pgid: int) -> None:
        """`worker`'s group on the board (keyed by the worker: a pid may come round again)."""
        if not self._free:
            self._grow()
        slot = self._free.pop()
        SLOT.pack_into(self._map, slot * SLOT.size, pgid)
        self._slots[id(worker)] = slot

    def remove(self, worker: object) -> None:
        slot = self._slots.pop(id(worker), None)
        if slot is not None:
            SLOT.pack_into(self._map, slot * SLOT.size, 0)
            self._free.append(slot)

    def _grow(self) -> None:
        slots = len(self._map) // SLOT.size
        self._map.resize(2 * slots * SLOT.size)  # the memfd grows with it
        self._free = list(range(2 * slots - 1, slots - 1, -1))

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)


def read_board(fd: int) -> set[int]:
    """The groups on the board behind `fd` (the sentinel's side)."""
    raw = os.pread(fd, os.fstat(fd).st_size, 0)
    return {pgid for (pgid,) in SLOT.iter_unpack(raw[: len(raw) - len(raw) % SLOT.size]) if pgid}
