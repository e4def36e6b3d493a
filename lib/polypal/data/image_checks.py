"""Checks that run before Pillow opens a PNG, JPEG or TIFF: its structure, read from the headers only.

Pillow parses a file's metadata in Python before the pixel cap can be asked: every PNG chunk, every JPEG
marker segment before the first scan, every value of every TIFF tag of the first directory. Its cost grows
with the file, not the pixels: an 8x8 PNG of 3 million empty chunks (36 MB) took 20 s and 1 GB to open,
a 60 MB JPEG of empty APP segments 30 s and 2 GB (a hostile client's uploads, issue notes of 2026-12-07).
Here, in bounded work, a file is refused (``DataError``) when

- it is larger than its declared pixels could need (``raw`` bytes, twice, plus ``SLACK`` for metadata);
- a PNG has more chunks than its image data could need, or more than ``MAX_SEGMENTS`` others;
- a PNG's EXIF chunk is larger than ``MAX_EXIF``, or it has more than ``MAX_INFLATED_CHUNKS`` compressed ones;
- a JPEG has more than ``MAX_SEGMENTS`` marker segments or fill bytes before its first scan (4 times as many
  in all: ``images._jpeg_scans``), or more than ``MAX_OF_A_KIND`` of one marker there;
- a TIFF's first directory has more than ``MAX_TIFF_TAGS`` tags, tag values of more than ``MAX_TIFF_BYTES``,
  or more numbers than its strips (one offset and one count per row at most) or 16x16 tiles could need, or
  tiles larger than the image (and than ``MAX_TILE``).

Whatever is not one of these formats is left to the reader, which refuses it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from polypal.errors import DataError

SLACK = 8 << 20  # bytes of metadata a frame may carry beyond its pixels (ICC profiles, EXIF and its thumbnail)
MAX_SEGMENTS = 1000  # JPEG marker segments (fill bytes counted), PNG chunks other than image data: real files have tens
MAX_EXIF = 128 << 10  # a PNG's eXIf chunk (a JPEG's EXIF is one segment: 64 KB at most)
MAX_INFLATED_CHUNKS = 64  # a PNG's iCCP, zTXt and iTXt chunks, each inflated to up to 1 MB by Pillow: real
# files have a few (990 iCCP chunks took 2 s)
MAX_OF_A_KIND = 64  # JPEG segments of one marker before the image (DQT, DHT, APP13...; Pillow parses some in
# O(n^2): 990 DQT segments took 3 s); APP1 (extended XMP) and APP2 (an ICC profile in up to 255 pieces), 256
MAX_TILE = 1024  # a TIFF tile's side beyond the image's own (rounded up to 16): libtiff allocates a whole tile
# (an 8x8 image with 26752 x 26752 tiles: 2 GB)
MAX_TIFF_TAGS = 1000  # tags of a TIFF's first directory: real files have tens
MAX_TIFF_BYTES = 16 << 20  # bytes of a TIFF's first directory's tag values (ICC and XMP are the big ones)
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_TIFF_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8,
                   18: 8}
_TIFF_BYTE_TYPES = {1, 2, 6, 7}  # bytes, ASCII, signed bytes, undefined: read as bytes, not number by number


def check_image_file(path: str | Path, check_pixels=None) -> tuple[int, int] | None:
    """Refuse a PNG, JPEG or TIFF whose structure would make opening it cost more than its pixels (see the
    module's docstring); the (width, height) it declares, or None for another format. ``check_pixels(path,
    w, h)`` is asked as soon as the size is read (the pixel cap), before the rest is walked."""
    path = Path(path)
    check_pixels = check_pixels or (lambda *a: None)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(0)
            if head.startswith(b"\x89PNG\r\n\x1a\n"):
                w, h, raw = _png(path, f, size, check_pixels)
            elif head.startswith(b"\xff\xd8"):
                w, h, raw = _jpeg(path, f, size, check_pixels)
            elif head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
                w, h, raw = _tiff(path, f, size, head, check_pixels)
            else:
                return None
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except DataError:
        raise
    except (OSError, struct.error, ValueError, OverflowError) as e:  # (a seek past what an offset can be)
        raise DataError(path, f"corrupt or truncated image ({e})") from None
    if size > 2 * raw + SLACK:
        raise DataError(path, f"file of {size} bytes for an image of {w}x{h} pixels: more than its pixels could "
                              f"need (metadata or hidden data?); refused before decoding")
    return w, h


def _read(f, n: int) -> bytes:
    b = f.read(n)
    if len(b) < n:
        raise struct.error(f"the file ends within a header ({len(b)} of {n} bytes)")
    return b


def _png(path, f, size, check_pixels):
    """IHDR's size; the chunks walked by their lengths (data not read)."""
    f.seek(8)
    length, kind = struct.unpack(">I4s", _read(f, 8))
    if kind != b"IHDR" or length < 13:
        raise DataError(path, "a PNG must start with its IHDR chunk")
    w, h, depth, colour = struct.unpack(">IIBB", _read(f, 10))
    check_pixels(path, w, h)
    raw = w * h * _PNG_CHANNELS.get(colour, 4) * max(depth, 8) // 8 + h
    allowed = MAX_SEGMENTS + raw // 4096  # image data chunks of at least 4 KB each, then some
    chunks = others = inflated = 0
    pos = 8
    while pos + 12 <= size:
        f.seek(pos)
        length, kind = struct.unpack(">I4s", _read(f, 8))
        chunks += 1
        others += kind != b"IDAT"
        if kind == b"eXIf" and length > MAX_EXIF:
            raise DataError(path, f"PNG with an EXIF chunk of {length} bytes (more than {MAX_EXIF}): refused "
                                  f"before decoding")
        inflated += kind in (b"iCCP", b"zTXt", b"iTXt")
        if inflated > MAX_INFLATED_CHUNKS:
            raise DataError(path, f"PNG of more than {MAX_INFLATED_CHUNKS} compressed metadata chunks (iCCP, "
                                  f"zTXt, iTXt): refused before decoding")
        if others > MAX_SEGMENTS or chunks > allowed:
            raise DataError(path, f"PNG of more than {min(allowed, MAX_SEGMENTS) if others > MAX_SEGMENTS else allowed}"
                                  f" {'chunks besides image data' if others > MAX_SEGMENTS else 'chunks'} "
                                  f"for {w}x{h} pixels: refused before decoding")
        if kind == b"IEND":
            break
        pos += 12 + length
    return w, h, raw


def _jpeg(path, f, size, check_pixels):
    """The frame header's size; the marker segments up to the first scan walked by their lengths (those
    after it by ``images._jpeg_scans``, which reads the whole, by then bounded, file)."""
    pos, segments, found, kinds = 2, 0, None, {}
    while pos + 4 <= size:
        segments += 1  # each step: a segment, a fill byte or a marker without a length (all cost a step)
        if segments > MAX_SEGMENTS:
            raise DataError(path, f"JPEG of more than {MAX_SEGMENTS} marker segments (or fill bytes) before its "
                                  f"image: refused before decoding")
        f.seek(pos)
        ff, m = _read(f, 2)
        if ff != 0xFF:
            raise DataError(path, f"not a JPEG marker at byte {pos}: corrupt")
        if m == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= m <= 0xD7 or m == 0x01:
            pos += 2
            continue
        kinds[m] = kinds.get(m, 0) + 1
        if kinds[m] > (limit := (4 if m in (0xE1, 0xE2) else 1) * MAX_OF_A_KIND):  # (APP1: extended XMP too)
            raise DataError(path, f"JPEG of more than {limit} segments of marker 0xFF{m:02X} before its image: "
                                  f"refused before decoding")
        (length,) = struct.unpack(">H", _read(f, 2))
        if m in _JPEG_SOF and found is None:
            depth, h, w, comps = struct.unpack(">BHHB", _read(f, 6))
            check_pixels(path, w, h)
            # (at most 4 components are decoded: a frame header claiming 255 would lift the size bound)
            found = w, h, w * h * min(max(comps, 1), 4) * (2 if depth > 8 else 1)
        if m in (0xDA, 0xD9):
            break
        pos += 2 + length
    if found is None:
        raise DataError(path, "JPEG without a frame header (SOF) before its data: corrupt")
    return found


def _tiff(path, f, size, head, check_pixels):
    """The first directory's tags: their number, and their values' size and count, from the directory alone."""
    order = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\x00", b"\x00+")
    if big:  # BigTIFF: 8-byte offsets and counts, 20-byte entries
        (offset,) = struct.unpack(order + "Q", head[8:16])
        f.seek(offset)
        (n,) = struct.unpack(order + "Q", _read(f, 8))
    else:
        (offset,) = struct.unpack(order + "I", head[4:8])
        f.seek(offset)
        (n,) = struct.unpack(order + "H", _read(f, 2))
    if n > MAX_TIFF_TAGS:
        raise DataError(path, f"TIFF directory of {n} tags (more than {MAX_TIFF_TAGS}): refused before decoding")
    entry = 20 if big else 12
    table = _read(f, n * entry)
    tags, value_bytes, numbers, bits = {}, 0, 0, 8
    for i in range(n):
        e = table[i * entry:(i + 1) * entry]
        tag, kind = struct.unpack(order + "HH", e[:4])
        (count,) = struct.unpack(order + ("Q" if big else "I"), e[4:12] if big else e[4:8])
        value_bytes += count * _TIFF_TYPE_SIZE.get(kind, 1)
        if kind not in _TIFF_BYTE_TYPES:
            numbers += count
        if count == 1 and kind in (3, 4, 16):  # a SHORT, LONG or LONG8 held in the entry (width, height, ...)
            fmt = {3: "H", 4: "I", 16: "Q"}[kind]
            tags[tag] = struct.unpack(order + fmt, e[12:12 + struct.calcsize(fmt)] if big else
                                      e[8:8 + struct.calcsize(fmt)])[0]
        if tag == 258 and kind == 3 and 1 <= count <= 16:  # BitsPerSample: one per sample (in the entry or not)
            field = e[12:20] if big else e[8:12]
            if 2 * count > len(field):
                here = f.tell()
                f.seek(struct.unpack(order + ("Q" if big else "I"), field)[0])
                field = _read(f, 2 * count)
                f.seek(here)
            bits = max(struct.unpack(f"{order}{count}H", field[:2 * count]))
    w, h = tags.get(256, 0), tags.get(257, 0)
    check_pixels(path, w, h)
    for side, tag in ((w, 322), (h, 323)):  # TileWidth, TileLength
        if tags.get(tag, 0) > max(-(-side // 16) * 16, MAX_TILE):
            raise DataError(path, f"TIFF tiles of {tags.get(322)}x{tags.get(323)} for {w}x{h} pixels: refused "
                                  f"before decoding")
    # strip offsets and counts: one each per row at most; tile offsets and counts: one each per 16x16 tile
    allowed = 4 * h + 2 * (-(-w // 16)) * (-(-h // 16)) + 65536
    if value_bytes > MAX_TIFF_BYTES or numbers > allowed:
        raise DataError(path, f"TIFF directory with {value_bytes} bytes of tag values ({numbers} numbers) for "
                              f"{w}x{h} pixels: refused before decoding")
    spp = tags.get(277, 1)
    return w, h, w * h * max(spp, 1) * max(bits, 8) // 8
