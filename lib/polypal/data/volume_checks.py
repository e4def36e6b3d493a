"""Checks that run before a volume reader allocates what a file declares: NIfTI header extensions and
NRRD compressed data, where a few KB can make the reader allocate gigabytes.

- NIfTI (``nibabel``): the header extensions are read whole into memory before any data, each at the size
  it declares (up to 2 GB), and with a ``vox_offset`` of 0 until the end of the (gzip) stream. Refused
  here: extensions past ``MAX_HEADER_BYTES``, an extension larger than the room ``vox_offset`` leaves,
  and an extension size under 8 (``read`` of a negative size reads everything).
- NRRD (``pynrrd``): gzip or bzip2 data is decompressed whole, whatever the header's sizes say. Counted
  here, in bounded pieces and without keeping it: data that inflates past the declared size is refused
  as soon as it does.
"""

from __future__ import annotations

import bz2
import gzip
import math
import struct
import zlib
from pathlib import Path

from polypal.errors import DataError

MAX_HEADER_BYTES = 1 << 20  # header extensions of a frame or label (3D Slicer writes none)
_PIECE = 1 << 20  # at most this much decompressed output is held at once


def check_nifti_header(path) -> None:
    """Refuse a NIfTI-1/-2 file whose header extensions would make nibabel read more than
    MAX_HEADER_BYTES (or the rest of the stream) before its data."""
    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(544)
            if len(head) < 352:
                return  # too short to be NIfTI: nibabel says why
            for endian in "<>":
                n = struct.unpack(endian + "i", head[:4])[0]
                if n in (348, 540):
                    break
            else:
                return  # not NIfTI: nibabel refuses it without reading extensions
            ext_at = n
            vox = struct.unpack(endian + ("f" if n == 348 else "q"), head[108:112] if n == 348 else head[168:176])[0]
            flag = head[ext_at:ext_at + 4]
            if len(flag) < 4 or flag[0] == 0:
                return  # no extensions: nibabel goes straight to the data it declares
            start = ext_at + 4
            if not (math.isfinite(vox) and start <= vox <= MAX_HEADER_BYTES):
                raise DataError(path, f"NIfTI header extensions up to byte {vox} (vox_offset): more than "
                                      f"{MAX_HEADER_BYTES} bytes of header, or none stated: refused")
            room = int(vox) - start
            f.seek(start)  # the first extension (a gzip stream seeks by decompressing: a few hundred bytes)
            while room >= 16:
                d = f.read(8)
                if len(d) < 8:
                    return  # truncated: nibabel refuses it
                esize = struct.unpack(endian + "i", d[:4])[0]
                if esize < 8 or esize > room:
                    raise DataError(path, f"NIfTI header extension of {esize} bytes where {room} bytes are left "
                                          f"before the data: refused")
                f.read(esize - 8)  # at most MAX_HEADER_BYTES in all
                room -= esize
    except DataError:
        raise
    except (OSError, EOFError, zlib.error, struct.error):
        return  # unreadable before any extension was found too large: nibabel stops at the same place and says why


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
