"""What makes a rename durable: the folder's own fsync (shared by every layer that writes files)."""

from __future__ import annotations

import errno
import os


def fsync_dir(path: str) -> None:
    """fsync a folder, so that a rename or a new file in it survives a power cut (no-op where it cannot be
    opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL:  # (a file system that cannot sync a folder says EINVAL: nothing to do)
            raise
    finally:
        os.close(fd)
