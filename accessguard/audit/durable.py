"""Making appended lines durable, the one way every file of the trail does it."""

from __future__ import annotations

import os

__all__ = ["sync_data"]


def sync_data(fd: int) -> None:
    """Make appended lines durable before returning.

    fdatasync where there is one: it writes the data and the metadata needed to
    read it back (the file's new size), not timestamps; about a third of an
    fsync's cost on ext4 here (0.36 ms against 1.08 ms). fsync elsewhere (macOS).
    """
    getattr(os, "fdatasync", os.fsync)(fd)
