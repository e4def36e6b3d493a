"""Checks that run before a volume reader allocates what a file declares: NIfTI header extensions and
NRRD compressed data, where a few KB can make the reader allocate gigabytes.

- NIfTI (``nibabel``): the header extensions are read whole into memory before any data, each at the size
  it declares (up to 2 GB), and with a ``vox_offset`` of 0 until the end of the (gzip) stream. Here
  nibabel's own header reader runs on a file object that refuses to read past ``MAX_HEADER_BYTES`` (or to
  the end), before ``nib.load``.
- NRRD (``pynrrd``): gzip or bzip2 data is decompressed whole, whatever the header's sizes say. Counted
  here, in bounded pieces and without keeping it: data that inflates past the declared size is refused
  as soon as it does.
"""

from __future__ import annotations

import bz2
import zlib
from pathlib import Path

from polypal.errors import DataError

MAX_HEADER_BYTES = 1 << 20  # header extensions of a frame or label (3D Slicer writes none)
_PIECE = 1 << 20  # at most this much decompressed output is held at once


class _TooMuch(Exception):
    """A header read past the budget (or of everything that is left)."""


class _Bounded:
    """A file object that refuses any read past ``budget`` bytes in all, and ``read()``/``read(-1)``."""

    def __init__(self, f, budget: int):
        self.f, self.left = f, budget

    def read(self, n=-1):
        if n is None or n < 0 or n > self.left:
            raise _TooMuch(n)
        self.left -= n
        return self.f.read(n)

    def tell(self):
        return self.f.tell()

    def seek(self, *args):
        return self.f.seek(*args)


def check_nifti_header(path) -> None:
    """Refuse a NIfTI file whose header extensions would make nibabel read more than MAX_HEADER_BYTES (or
    the rest of the stream) before its data. nibabel's own class choice (as ``nib.load``) and its own header
    parser (byte order, ``sizeof_hdr`` fixes, ``vox_offset``) read the header here, through a reader that
    refuses what goes past the budget: a check that parsed the header by hand read some headers otherwise
    than nibabel does (a wrong ``sizeof_hdr``, mixed byte orders) and let their extensions through."""
    from nibabel.imageclasses import all_image_classes
    from nibabel.openers import ImageOpener

    path = Path(path)
    sniff, klass = None, None
    try:
        for candidate in all_image_classes:  # as nib.load picks the class
            ok, sniff = candidate.path_maybe_image(str(path), sniff)
            if ok:
                klass = candidate
                break
    except Exception:  # noqa: BLE001 - nibabel cannot tell either: nib.load says why
        return
    header_class = getattr(klass, "header_class", None)
    if header_class is None or not hasattr(header_class, "from_fileobj"):
        return
    size = getattr(getattr(header_class, "template_dtype", None), "itemsize", 0) or 540
    try:
        with ImageOpener(str(path), "rb") as f:
            header_class.from_fileobj(_Bounded(f, size + 4 + MAX_HEADER_BYTES))
    except _TooMuch:
        raise DataError(path, f"NIfTI header extensions past {MAX_HEADER_BYTES} bytes, larger than the room "
                              f"before the data, or read to the end (vox_offset 0): refused") from None
    except Exception:  # noqa: BLE001 - unreadable within the budget: nibabel stops at the same place and says why
        return


def check_nrrd_data(path, declared_bytes: int) -> None:
    """Refuse an NRRD file whose gzip or bzip2 data inflates past ``declared_bytes``, the header's sizes
    times its type's size. Raw and text data need no check here (they are no larger than the file)."""
    import nrrd

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            header = nrrd.read_header(fh)  # leaves fh at the data
            encoding = str(header.get("encoding", "")).lower()
            if encoding in ("gzip", "gz"):
                d = zlib.decompressobj(zlib.MAX_WBITS | 16)  # as pynrrd reads it
            elif encoding in ("bzip2", "bz2"):
                d = bz2.BZ2Decompressor()
            else:
                return
            out = 0

            def count(piece: bytes) -> None:
                nonlocal out
                out += len(piece)
                if out > declared_bytes:
                    raise DataError(path, f"NRRD {encoding} data inflates past its declared {declared_bytes} "
                                          f"bytes: refused")

            while not d.eof:
                chunk = fh.read(1 << 16)
                if not chunk:
                    break
                if isinstance(d, bz2.BZ2Decompressor):
                    count(d.decompress(chunk, _PIECE))
                    while not d.eof and not d.needs_input:
                        count(d.decompress(b"", _PIECE))
                else:
                    data = chunk
                    while data and not d.eof:
                        count(d.decompress(data, _PIECE))
                        data = d.unconsumed_tail
    except DataError:
        raise
    except Exception:  # noqa: BLE001 - corrupt before it inflated past its size: pynrrd stops there and says why
        return
