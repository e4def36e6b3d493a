"""File-level steps the frame store's crash safety is built from: signatures, fsynced copies and writes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile


def file_signature(path) -> list | None:
    """[inode, mtime_ns, size] of a file now, None when it is not there: a file replaced by a rename (an
    upload, a replace) has another, so a reader can tell whether what it read is still the file."""
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):
        return None
    return [st.st_ino, st.st_mtime_ns, st.st_size]


def label_trash_name(tag: str, path: str) -> str:
    """A label file's name in a trash folder: ``labels-<tag>-<file>``. A 128-character tag and a 128-character id
    would make that longer than a file name may be (255 bytes): such a tag is replaced by its digest, after
    another prefix (``label-sha256-``), so that no other tag's name can be the same (the manifest keeps
    where the file was, so a restore does not need the name)."""
    name = f"labels-{tag}-{os.path.basename(path)}"
    if len(name.encode()) <= 200:
        return name
    return f"label-sha256-{hashlib.sha256(tag.encode()).hexdigest()[:32]}-{os.path.basename(path)}"


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read without changing it (os.umask sets it, for every thread at once)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def file_mode() -> int:
    """The mode a file the process creates gets (0666 less the umask). mkstemp makes 0600 files: frames and
    labels stored through the server were readable by its own user only, unlike every other file there (a
    backup job or a viewer running as another user could not read them)."""
    return 0o666 & ~_umask()


def copy_fsynced(src: str, dir_: str) -> str:
    """Copy ``src`` to a new hidden temporary file in ``dir_`` (fsynced, with the umask's mode); returns its
    path."""
    fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=dir_)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return tmp


def same_entry(a: str, b: str | None) -> bool:
    """Whether two paths name the same directory entry's file (by lstat: no link followed, so a dangling
    symlink compares too)."""
    if not b:
        return False
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def write_fsynced(path: str, doc: dict) -> None:
    """Written whole or not at all (a temporary file, fsynced, renamed): a crash never leaves half of it."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
