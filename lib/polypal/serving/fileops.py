"""File-level steps the frame store's crash safety is built from: signatures, fsynced copies and writes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from polypal.durable import fsync_dir  # noqa: F401 - the store's and the app's import it from here


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


def create_new(dir_: str, prefix: str = ".upload-", suffix: str = "") -> tuple[int, str]:
    """A new file of a unique name in ``dir_``, opened for writing: (fd, path). Created with mode 0666, so
    the kernel applies the umask or the folder's default ACL, as for any file the server writes.
    mkstemp's fixed 0600 made frames, labels and uploaded models unreadable to a backup job or a viewer
    running as another user (and setting the mode afterwards would override a default ACL)."""
    import secrets

    for _ in range(100):
        path = os.path.join(dir_, f"{prefix}{secrets.token_hex(8)}{suffix}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {dir_}")


def copy_fsynced(src: str, dir_: str) -> str:
    """Copy ``src`` to a new hidden temporary file in ``dir_`` (fsynced; its mode as the umask or the folder's
    default ACL gives); returns its path."""
    fd, tmp = create_new(dir_)
    try:
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
