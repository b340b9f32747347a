"""Appending lines durably and whole, the one way every file of the trail does it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

__all__ = ["append_whole", "sync_data"]


def sync_data(fd: int) -> None:
    """Make appended lines durable before returning.

    fdatasync where there is one: it writes the data and the metadata needed to
    read it back (the file's new size), not timestamps; about a third of an
    fsync's cost on ext4 here (0.36 ms against 1.08 ms). fsync elsewhere (macOS).
    """
    getattr(os, "fdatasync", os.fsync)(fd)


def append_whole(
    fd: int, data: bytes, end: int, *, sync: bool, then: Callable[[], None] | None = None
) -> None:
    """Write ``data`` at ``end`` (durable first with ``sync``), then run ``then``; all or
    nothing: on any failure (a full disk, a failing ``then``) the file is cut back to ``end``
    and the error raised."""
    try:
        view, offset = memoryview(data), end
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
        if sync:
            sync_data(fd)
        if then is not None:
            then()
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, end)
        raise
