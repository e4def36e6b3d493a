"""The data readers' rules, each at its boundary (issue 17: mutation testing of lib/polypal/data).

Fast, no server: every expected value is written out by hand or is the array the test wrote to disk.
tests/test_data.py covers the layouts and the cache; this file the pixel cap, the compressed-size
rule, 16-bit and float frames, RGB volumes, the mask rules (half-max threshold, alpha, photographs,
label volumes) and write_label's formats.
"""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import polypal.data.images as images
from polypal.data import (DataError, FrameSet, TooLarge, find_pairs, list_images, load_folder, load_frame,
                          normalize, read_mask, read_rgb, resize_mask, resize_prob, resize_rgb, set_max_pixels,
                          write_label)
from polypal.data.images import _check_compressed, _plane


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w x h grey pixels but holds one empty IDAT (refused before any decoding)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


# ------------------------------------------------------------------ images.py: the pixel cap


def test_default_cap_is_4096_squared():
    assert images.DEFAULT_MAX_PIXELS == 16_777_216


def test_pixel_cap_boundary(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 12)
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "ok.png")  # 12 pixels: allowed
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "big.png")  # 16
    Image.fromarray(np.zeros((2, 7, 3), np.uint8)).save(tmp_path / "wide.png")  # 14 (w + h = 9 < 12)
    assert read_rgb(tmp_path / "ok.png").shape == (3, 4, 3)
    for name, size in (("big.png", "4x4"), ("wide.png", "7x2")):
        with pytest.raises(TooLarge, match=rf"{name}: image of {size} pixels is larger than the limit of 12 pixels"):
            read_rgb(tmp_path / name)


def test_set_max_pixels(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", images.MAX_PIXELS)  # restored after the test
    set_max_pixels(4)
    assert images.MAX_PIXELS == 4
    set_max_pixels("9")
    assert images.MAX_PIXELS == 9
    with pytest.raises(ValueError, match="at least 4, got 3"):
        set_max_pixels(3)
    assert images.MAX_PIXELS == 9


def test_header_bombs_are_refused_before_decoding(tmp_path):
    (tmp_path / "big.png").write_bytes(_png_header_only(5000, 5000))  # 25 MP: over our 16.7 MP cap
    with pytest.raises(TooLarge, match="image of 5000x5000 pixels is larger than the limit"):
        read_rgb(tmp_path / "big.png")
    (tmp_path / "huge.png").write_bytes(_png_header_only(20000, 20000))  # 400 MP: refused from its header
    with pytest.raises(TooLarge, match="huge.png: image of 20000x20000 pixels is larger than the limit"):
        read_rgb(tmp_path / "huge.png")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _small_png(extra: bytes = b"", after: bytes = b"") -> bytes:
    """An 8x8 grey PNG with ``extra`` chunks before its image data and ``after`` after it."""
    raw = b"".join(b"\x00" + bytes(range(8)) for _ in range(8))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)) + extra
            + _chunk(b"IDAT", zlib.compress(raw)) + after + _chunk(b"IEND", b""))


def _small_jpeg(tmp_path) -> bytes:
    from PIL import Image

    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "plain.jpg")
    return (tmp_path / "plain.jpg").read_bytes()


def _tiff_with_strips(n: int) -> bytes:
    """An 8x8 grey uncompressed TIFF whose one strip is listed ``n`` times (StripOffsets, StripByteCounts)."""
    pixels = bytes(64)
    entries = [(256, 3, 1, 8), (257, 3, 1, 8), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, n, None), (277, 3, 1, 1), (278, 3, 1, 8), (279, 4, n, None)]
    ifd_at = 8 + len(pixels)
    arrays_at = ifd_at + 2 + 12 * len(entries) + 4
    table, arrays = b"", b""
    for tag, kind, count, value in entries:
        if value is None:  # an array: every strip at the pixels, 64 bytes each (offsets), then counts
            table += struct.pack("<HHII", tag, kind, count, arrays_at + len(arrays))
            arrays += struct.pack(f"<{count}I", *([8] * count if tag == 273 else [64] * count))
        else:
            table += struct.pack("<HHIHH", tag, kind, count, value, 0)
    return b"II*\x00" + struct.pack("<I", ifd_at) + pixels + struct.pack("<H", len(entries)) + table + b"\0" * 4 + arrays


def _tiff_tiled(tile: int, data: int = 64) -> bytes:
    """An 8x8 grey uncompressed TIFF in one ``tile`` x ``tile`` tile of ``data`` bytes."""
    entries = [(256, 3, 8), (257, 3, 8), (258, 3, 8), (259, 3, 1), (262, 3, 1), (277, 3, 1), (322, 4, tile),
               (323, 4, tile), (324, 4, 8), (325, 4, data)]
    table = b"".join(struct.pack("<HHI", t, k, 1) + (struct.pack("<HH", v, 0) if k == 3 else struct.pack("<I", v))
                     for t, k, v in entries)
    return (b"II*\x00" + struct.pack("<I", 8 + data) + bytes(data) + struct.pack("<H", len(entries)) + table
            + b"\0" * 4)


def test_metadata_bombs_are_refused_before_pillow_parses_them(tmp_path):
    """Pillow parses a file's metadata in Python before the pixel cap can be asked, at a cost that grows with
    the file, not its pixels: a hostile client's 8x8 PNG of 3 million empty chunks took 20 s and 1 GB of the
    server's memory, a JPEG of empty APP segments 30 s and 2 GB, a TIFF listing its one strip a million times
    9 s. Each is refused from its headers (the same files with a little metadata are read)."""
    cases = {
        "chunks.png": _small_png(extra=_chunk(b"abCd", b"") * 200_000),
        "chunks-after.png": _small_png(after=_chunk(b"abCd", b"") * 200_000),
        "big-chunk.png": _small_png(extra=_chunk(b"abCd", bytes(9 << 20))),  # one chunk, more than pixels need
        "idat.png": _small_png(extra=_chunk(b"IDAT", b"") * 200_000),
        "strips.tif": _tiff_with_strips(200_000),
    }
    jpg = _small_jpeg(tmp_path)
    cases["app.jpg"] = jpg[:2] + b"\xff\xe5\x00\x02" * 200_000 + jpg[2:]
    sof = jpg.index(b"\xff\xc0")
    cases["app-after-sof.jpg"] = jpg[:sof] + jpg[sof:jpg.index(b"\xff\xda")] + b"\xff\xe5\x00\x02" * 200_000 + \
        jpg[jpg.index(b"\xff\xda"):]
    cases["com-before-eoi.jpg"] = jpg[:-2] + b"\xff\xfe\x00\x02" * 5000 + jpg[-2:]
    # fill bytes (0xFF before a marker) cost a step each too: 32 MB of them took 7 s before they counted
    cases["fill.jpg"] = jpg[:2] + b"\xff" * 200_000 + jpg[2:]
    cases["fill-before-eoi.jpg"] = jpg[:-2] + b"\xff" * 200_000 + jpg[-2:]
    # an EXIF block Pillow unpacks value by value when it turns the frame upright (40 MB: 13 s, 3.6 GB)
    cases["exif.png"] = _small_png(extra=_chunk(b"eXIf", b"MM\x00*" + bytes(2 << 20)))
    # a tile far larger than the image: libtiff allocates it whole (26752 x 26752: 2 GB for 154 bytes)
    cases["tile.tif"] = _tiff_tiled(26752)
    # many compressed chunks Pillow inflates (each up to 1 MB), many segments of one marker (O(n^2) in Pillow)
    cases["iccp.png"] = _small_png(extra=_chunk(b"iCCP", b"p\x00\x00" + zlib.compress(bytes(1000))) * 100)
    dqt = b"\xff\xdb\x00\x43\x00" + bytes(range(64))
    cases["dqt.jpg"] = jpg[:2] + dqt * 100 + jpg[2:]
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=f"{name}: .*(chunks|segments|tag values|more than its pixels|EXIF|tiles)"):
            read_rgb(tmp_path / name)
    # the same with a little metadata: read
    ok = {"few.png": _small_png(extra=_chunk(b"tEXt", b"Comment\x00fine") * 50, after=_chunk(b"abCd", b"x") * 50),
          "few.jpg": jpg[:2] + b"\xff\xe5\x00\x02" * 50 + jpg[2:], "few.tif": _tiff_with_strips(8),
          "exif-sized.png": _small_png(extra=_chunk(b"abCd", bytes(1 << 20)))}
    rgb = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    for name, kw in (("rgb.tif", {}), ("lzw.tif", {"compression": "tiff_lzw"}),
                     ("progressive.jpg", {"progressive": True, "quality": 95})):
        Image.fromarray(rgb).save(tmp_path / name, **kw)  # (BitsPerSample 8,8,8: an array, read too)
        ok[name] = (tmp_path / name).read_bytes()
    ok["stuffed.jpg"] = jpg[:-2] + b"\xff\x00" * 1000 + jpg[-2:]  # stuffed bytes in a scan are data, not steps
    ok["tile256.tif"] = _tiff_tiled(256, 256 * 256)  # a usual tile size, larger than a small image: fine
    ok["dqt.jpg"] = jpg[:2] + dqt * 8 + jpg[2:]
    for name, data in ok.items():
        (tmp_path / name).write_bytes(data)
        assert read_rgb(tmp_path / name).shape == (8, 8, 3), name
    assert read_mask(tmp_path / "few.png", expected_hw=(8, 8)).shape == (8, 8)
    with pytest.raises(DataError, match="chunks.png: PNG of more than"):  # masks are read the same way
        read_mask(tmp_path / "chunks.png", expected_hw=(8, 8))


def test_an_exif_chunk_after_the_image_data_does_not_turn_a_checked_mask(tmp_path):
    """A PNG's EXIF after its image data is seen only once the image is loaded: the size was checked
    without it, then the mask was turned by it (a review: a 30x20 mask passed as 20x30 and came back
    30x20). The orientation read with the header is the one applied."""
    orient6 = b"MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00"
    mask = np.zeros((20, 30), np.uint8)
    mask[2:6, 3:20] = 255
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    png = buf.getvalue()
    iend = png.rindex(b"IEND") - 4
    (tmp_path / "m.png").write_bytes(png[:iend] + _chunk(b"eXIf", orient6) + png[iend:])
    got = read_mask(tmp_path / "m.png", expected_hw=(20, 30))
    assert got.shape == (20, 30) and (got == (mask > 0)).all()


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="nope.png: file not found"):
        read_rgb(tmp_path / "nope.png")
    with pytest.raises(DataError, match="nope.png: file not found"):
        read_mask(tmp_path / "nope.png")


def test_truncated_png_is_corrupt(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 60), dtype=np.uint8)).save(tmp_path / "t.png")
    (tmp_path / "t.png").write_bytes((tmp_path / "t.png").read_bytes()[:-300])
    with pytest.raises(DataError, match="t.png: corrupt or truncated image"):
        read_rgb(tmp_path / "t.png")


# ------------------------------------------------------------------ images.py: decoding frames


def test_16bit_frames_are_scaled_to_their_maximum(tmp_path):
    a = np.array([[0, 1000], [30000, 65535]], np.uint16)
    Image.fromarray(a).save(tmp_path / "a.png")
    # v / 65535 * 255, truncated: 0, 3.89, 116.7, 255
    np.testing.assert_array_equal(read_rgb(tmp_path / "a.png"), np.repeat([[[0], [3]], [[116], [255]]], 3, axis=2))
    b = np.array([[0, 128], [200, 256]], np.uint16)  # maximum 256: scaled (128 * 255 / 256 = 127.5)
    Image.fromarray(b).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "b.png")[..., 0], [[0, 127], [199, 255]])
    c = np.arange(256, dtype=np.uint16).reshape(16, 16)  # maximum 255: kept as it is
    Image.fromarray(c).save(tmp_path / "c.png")
    assert Image.open(tmp_path / "c.png").mode == "I;16"
    out = read_rgb(tmp_path / "c.png")
    assert out.dtype == np.uint8 and out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out[..., 1], c)


def test_signed_and_float_frames_are_clipped(tmp_path):
    Image.fromarray(np.array([[-5, 0, 1], [100, 200, 255]], np.int32)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    np.testing.assert_array_equal(read_rgb(tmp_path / "i.tif")[..., 2], [[0, 0, 1], [100, 200, 255]])
    Image.fromarray(np.array([[0.5, 10.7], [100.2, 254.9]], np.float32)).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(read_rgb(tmp_path / "f.tif")[..., 0], [[0, 10], [100, 254]])


def test_grey_and_palette_frames_become_rgb_with_their_values(tmp_path):
    g = np.array([[0, 50, 100], [150, 200, 250]], np.uint8)
    Image.fromarray(g).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "g.png"), np.repeat(g[..., None], 3, axis=2))
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, 2] = (0, 0, 255)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(read_rgb(tmp_path / "p.png"), rgb)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgb.png"), rgb)


@pytest.mark.parametrize("h, w, ok", [(2, 2, True), (1, 5, False), (5, 1, False)])
def test_frames_must_be_at_least_2x2(tmp_path, h, w, ok):
    Image.fromarray(np.full((h, w, 3), 7, np.uint8)).save(tmp_path / "x.png")
    if ok:
        assert read_rgb(tmp_path / "x.png").shape == (h, w, 3)
    else:
        with pytest.raises(DataError, match=rf"x.png: unexpected image shape \({h}, {w}, 3\)"):
            read_rgb(tmp_path / "x.png")


def test_compressed_size_rule_boundary(tmp_path):
    # a file may be up to 5% plus 64 KiB larger than its declared data
    raw = 100_000
    limit = int(raw * 1.05) + 65536  # 170536
    f = tmp_path / "v.nii"
    f.write_bytes(b"\0" * limit)
    _check_compressed(f, raw)
    f.write_bytes(b"\0" * (limit + 1))
    with pytest.raises(DataError, match=f"v.nii: file of {limit + 1} bytes for {raw} bytes of declared data"):
        _check_compressed(f, raw)
    f.write_bytes(b"\0" * 65536)  # headers alone: allowed even for no data
    _check_compressed(f, 0)
    f.write_bytes(b"\0" * 65537)
    with pytest.raises(DataError):
        _check_compressed(f, 0)


@pytest.mark.parametrize("shape, want", [((5, 7), (5, 7)), ((5, 7, 1), (5, 7)), ((5, 7, 3, 2), (5, 42)),
                                         ((5, 7, 1, 1, 3), (5, 21)), ((5, 7, 0), (5, 7)), ((5,), (5, 1))])
def test_plane(shape, want):
    assert _plane(shape) == want


def _rgb_volume(tmp_path, rgb, name="f.nii.gz"):
    """An (H, W, 3) frame as MONAI Label's DICOMweb datastore stores it: NIfTI (W, H, 1, 1, 3)."""
    import nibabel as nib

    vol = np.ascontiguousarray(rgb.transpose(1, 0, 2))[:, :, None, None, :]  # ITK's x, y order
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / name))
    return tmp_path / name


def test_rgb_volume_frame_is_read_in_x_y_order(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for name in ("f.nii.gz", "f.nii"):
        out = read_rgb(_rgb_volume(tmp_path, rgb, name))
        assert out.shape == (5, 7, 3) and out.flags.c_contiguous
        np.testing.assert_array_equal(out, rgb)


def test_grey_volume_frame_becomes_rgb(tmp_path):
    import nibabel as nib

    g = np.arange(35, dtype=np.uint8).reshape(5, 7)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(g.T), np.eye(4)), str(tmp_path / "g.nii"))
    np.testing.assert_array_equal(read_rgb(tmp_path / "g.nii"), np.repeat(g[..., None], 3, axis=2))
    nib.save(nib.Nifti1Image(np.ascontiguousarray(g.T)[:, :, None], np.eye(4)), str(tmp_path / "g3.nii"))
    np.testing.assert_array_equal(read_rgb(tmp_path / "g3.nii"), np.repeat(g[..., None], 3, axis=2))


def test_volume_frames_that_are_not_one_rgb_slice_are_refused(tmp_path):
    import nibabel as nib

    two = np.zeros((7, 5, 2, 1, 3), np.uint8)  # two slices
    nib.save(nib.Nifti1Image(two, np.eye(4)), str(tmp_path / "two.nii"))
    with pytest.raises(DataError, match=r"two.nii: not a single 2D frame: volume shape \(7, 5, 2, 3\)"):
        read_rgb(tmp_path / "two.nii")
    rgba = np.zeros((7, 5, 1, 1, 4), np.uint8)
    nib.save(nib.Nifti1Image(rgba, np.eye(4)), str(tmp_path / "rgba.nii"))
    with pytest.raises(DataError, match=r"rgba.nii: not an 8-bit RGB frame: volume shape \(7, 5, 1, 1, 4\)"):
        read_rgb(tmp_path / "rgba.nii")
    grey3d = np.zeros((7, 5, 2), np.uint8)  # two grey slices
    nib.save(nib.Nifti1Image(grey3d, np.eye(4)), str(tmp_path / "g2.nii"))
    with pytest.raises(DataError, match="g2.nii: not an 8-bit RGB frame"):
        read_rgb(tmp_path / "g2.nii")
    f = np.zeros((7, 5, 1, 1, 3), np.float32)
    nib.save(nib.Nifti1Image(f, np.eye(4)), str(tmp_path / "f.nii"))
    with pytest.raises(DataError, match="f.nii: not an 8-bit RGB frame: dtype float32"):
        read_rgb(tmp_path / "f.nii")
    (tmp_path / "junk.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(DataError, match="junk.nii.gz: not a readable image volume"):
        read_rgb(tmp_path / "junk.nii.gz")


def test_rgb_volume_pixel_cap_counts_pixels_not_bytes(tmp_path, monkeypatch):
    rgb = np.zeros((5, 7, 3), np.uint8)  # 35 pixels, 105 values
    path = _rgb_volume(tmp_path, rgb)
    monkeypatch.setattr(images, "MAX_PIXELS", 35)
    assert read_rgb(path).shape == (5, 7, 3)
    monkeypatch.setattr(images, "MAX_PIXELS", 34)
    with pytest.raises(TooLarge, match=r"image of 7x5 pixels is larger than the limit of 34"):
        read_rgb(path)
    import nibabel as nib

    for shape in ((7, 5), (7, 5, 1)):  # grey volumes W x H, without and with a slice axis: 35 pixels
        nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), np.eye(4)), str(tmp_path / "g.nii"))
        monkeypatch.setattr(images, "MAX_PIXELS", 35)
        assert read_rgb(tmp_path / "g.nii").shape == (5, 7, 3)
        monkeypatch.setattr(images, "MAX_PIXELS", 34)
        with pytest.raises(TooLarge, match=r"image of 7x5 pixels"):
            read_rgb(tmp_path / "g.nii")


def test_rgb_volume_with_trailing_bytes_is_refused(tmp_path):
    path = _rgb_volume(tmp_path, np.zeros((5, 7, 3), np.uint8), name="f.nii")
    size = path.stat().st_size
    raw = 5 * 7 * 3
    room = int(raw * 1.05 + 65536) - size  # bytes that may still follow
    path.write_bytes(path.read_bytes() + b"\0" * room)
    assert read_rgb(path).shape == (5, 7, 3)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DataError, match=r"f.nii: file of \d+ bytes for 105 bytes of declared data"):
        read_rgb(path)


# ------------------------------------------------------------------ images.py: resizing and normalising


def test_resizes():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[:, :3] = 200
    out = resize_rgb(rgb, 2)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert (out[:, 0] > 150).all() and (out[:, 1] < 50).all()  # left half bright, right half dark (antialiased)
    m = np.zeros((4, 6), bool)
    m[:2] = True  # the top half
    np.testing.assert_array_equal(resize_mask(m, 2), [[True, True], [False, False]])
    np.testing.assert_array_equal(resize_mask(m, 4)[:, 0], [True, True, False, False])
    p = np.array([[0.0, 1.0], [0.25, 0.75]], np.float32)
    up = resize_prob(p, (2, 6))  # (H, W) = (2, 6)
    assert up.shape == (2, 6) and up.dtype == np.float32
    assert up[0, 0] == pytest.approx(0.0) and up[0, -1] == pytest.approx(1.0)
    assert up[1, 0] == pytest.approx(0.25) and up[1, -1] == pytest.approx(0.75)
    np.testing.assert_allclose(resize_prob(p, (2, 2)), p)


def test_normalize_shape_and_values():
    x = np.zeros((2, 3, 5, 3), np.uint8)  # (N, H, W, C)
    x[1, 2, 4] = (255, 0, 51)
    y = normalize(x)
    assert y.shape == (2, 3, 3, 5) and y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(y[1, :, 2, 4], [1.0, -1.0, 51 / 255 * 2 - 1], atol=1e-6)
    assert (y[0] == -1.0).all()


# ------------------------------------------------------------------ masks.py: image masks


def _save(tmp_path, arr, name="m.png", mode=None):
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(tmp_path / name)
    return tmp_path / name


def test_half_max_threshold(tmp_path):
    m = np.zeros((20, 20), np.uint8)
    m[10:] = 255
    m[0, 0], m[0, 1] = 127, 128  # 2 * 127 < 255 <= 2 * 128
    np.testing.assert_array_equal(read_mask(_save(tmp_path, m)), m >= 128)
    lab = np.array([[0, 1, 2, 2]], np.uint8).repeat(4, axis=0)  # a 0/2 map with JPEG-like 1s: 2 * 1 >= 2
    np.testing.assert_array_equal(read_mask(_save(tmp_path, lab)), lab >= 1)
    lab3 = np.array([[0, 1, 2, 3]], np.uint8).repeat(4, axis=0)  # maximum 3: 2 * 1 < 3 <= 2 * 2
    np.testing.assert_array_equal(read_mask(_save(tmp_path, lab3)), lab3 >= 2)
    assert read_mask(_save(tmp_path, np.zeros((4, 4), np.uint8))).dtype == bool
    assert not read_mask(_save(tmp_path, np.zeros((4, 4), np.uint8))).any()


def test_red_polyp_and_16bit_masks(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[1:3, 1:4, 0] = 255  # drawn in red only
    np.testing.assert_array_equal(read_mask(_save(tmp_path, rgb)), rgb[..., 0] > 0)
    m16 = np.zeros((4, 5), np.uint16)
    m16[2, :] = 1000
    m16[3, :2] = 240  # below a quarter of the maximum: background
    m16[3, 2:] = 760  # above three quarters: polyp
    Image.fromarray(m16).save(tmp_path / "m16.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m16.png"), m16 >= 500)


def test_alpha_only_masks_are_read_from_alpha(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)  # black everywhere, the polyp drawn in alpha
    rgba[1:3, 2:4, 3] = 255
    np.testing.assert_array_equal(read_mask(_save(tmp_path, rgba, "a.png", "RGBA")), rgba[..., 3] > 0)
    la = np.zeros((4, 5, 2), np.uint8)
    la[..., 0] = 255  # uniform white grey level, the polyp in alpha
    la[0, :, 1] = 255
    np.testing.assert_array_equal(read_mask(_save(tmp_path, la, "la.png", "LA")), la[..., 1] > 0)
    drawn = rgba.copy()  # colour drawn, alpha uniform: the colour is the mask
    drawn[..., 3] = 255
    drawn[0, 0, :3] = 255
    want = np.zeros((4, 5), bool)
    want[0, 0] = True
    np.testing.assert_array_equal(read_mask(_save(tmp_path, drawn, "d.png", "RGBA")), want)
    both = rgba.copy()  # colour drawn AND alpha varies: the colour is the mask
    both[3, 4, :3] = 200
    want = np.zeros((4, 5), bool)
    want[3, 4] = True
    np.testing.assert_array_equal(read_mask(_save(tmp_path, both, "b.png", "RGBA")), want)
    flat = np.zeros((4, 5, 4), np.uint8)  # uniform colour, uniform alpha: an empty mask
    flat[..., 3] = 255
    assert not read_mask(_save(tmp_path, flat, "f.png", "RGBA")).any()


def test_palette_mask_with_transparency(tmp_path):
    p = Image.new("P", (5, 4), 0)
    p.putpalette([0, 0, 0] * 256)  # every index black: the mask is only in the transparency
    px = np.zeros((4, 5), np.uint8)
    px[2:, 1:3] = 1
    p.putdata(px.ravel().tolist())
    p.info["transparency"] = 0  # index 0 transparent, index 1 opaque
    p.save(tmp_path / "p.png", transparency=0)
    assert "transparency" in Image.open(tmp_path / "p.png").info
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), px == 1)


@pytest.mark.parametrize("value, n, refused", [(50, 2000, False), (51, 2000, True), (150, 2000, False),
                                               (149, 2000, True), (100, 200, False), (100, 201, True),
                                               (100, 6000, True)])
def test_photograph_rule_boundaries(tmp_path, value, n, refused):
    """Ambiguous: strictly between 25% and 75% of the maximum (200 here); more than 2% of pixels refuses."""
    m = np.zeros(10_000, np.uint8)
    m[:3000] = 200
    m[3000 : 3000 + n] = value
    m = m.reshape(100, 100)
    path = _save(tmp_path, m)
    if refused:
        with pytest.raises(DataError, match=rf"m.png: label looks like a photograph, not a mask: 3 distinct "
                                            rf"colours, {round(100 * n / 10_000)}% of the pixels neither"):
            read_mask(path)
    else:
        np.testing.assert_array_equal(read_mask(path), 2 * m.astype(int) >= 200)


def test_photograph_rule_only_for_intensity_masks(tmp_path):
    """Label maps with a maximum of at most 16 are never photographs (0..16 values are all labels)."""
    m = np.zeros((10, 10), np.uint8)
    m[:5] = 8
    m[0, 0] = 16  # maximum 16: half the pixels at 8 are fine (and read as polyp: 2 * 8 >= 16)
    np.testing.assert_array_equal(read_mask(_save(tmp_path, m)), m >= 8)
    m[0, 0] = 17  # maximum 17: half the pixels between 4.25 and 12.75
    with pytest.raises(DataError, match="photograph"):
        read_mask(_save(tmp_path, m))


def test_mask_size_must_match_in_both_axes(tmp_path):
    path = _save(tmp_path, np.zeros((4, 6), np.uint8))
    assert read_mask(path, expected_hw=(4, 6)).shape == (4, 6)
    assert read_mask(path, expected_hw=[4, 6]).shape == (4, 6)
    for hw in ((6, 4), (4, 5), (3, 6)):
        with pytest.raises(DataError, match=rf"m.png: mask size 6x4 \(WxH\) differs from its image's {hw[1]}x{hw[0]}"):
            read_mask(path, expected_hw=hw)


# ------------------------------------------------------------------ masks.py: label volumes and write_label


@pytest.mark.parametrize("ext", [".nrrd", ".nii", ".nii.gz", ".png"])
def test_write_label_round_trip(tmp_path, ext):
    m = np.zeros((5, 7), np.uint8)  # H != W: a transposed volume would not match
    m[1:3, 2:6] = 1
    m[4, 0] = 1
    path = write_label(m, tmp_path / f"lab{ext}")
    assert path == tmp_path / f"lab{ext}"
    np.testing.assert_array_equal(read_mask(path, expected_hw=(5, 7)), m.astype(bool))


def test_write_label_formats(tmp_path):
    import nibabel as nib
    import nrrd

    m = np.zeros((5, 7), bool)
    m[0, 6] = True
    arr, header = nrrd.read(str(write_label(m, tmp_path / "l.nrrd")), index_order="F")
    assert arr.shape == (7, 5, 1) and arr.dtype == np.uint8 and arr[6, 0, 0] == 1 and arr.sum() == 1
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_array_equal(header["space directions"], np.eye(3))
    np.testing.assert_array_equal(header["space origin"], np.zeros(3))
    assert list(header["kinds"]) == ["domain", "domain", "domain"]
    for ext in (".nii", ".nii.gz"):
        img = nib.load(str(write_label(m, tmp_path / f"l{ext}")))
        assert img.shape == (7, 5, 1) and img.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(img.affine, np.diag([-1.0, -1.0, 1.0, 1.0]))  # LPS identity in RAS
        assert np.asarray(img.dataobj)[6, 0, 0] == 1
    png = np.asarray(Image.open(write_label(m, tmp_path / "l.png")))
    assert png.dtype == np.uint8 and png.shape == (5, 7) and png[0, 6] == 1 and png.sum() == 1
    with pytest.raises(ValueError, match="unsupported label extension"):
        write_label(m, tmp_path / "l.jpg")


def test_label_volume_values(tmp_path):
    import nibabel as nib

    lab = np.zeros((7, 5), np.int16)  # (W, H)
    lab[1, 2] = 1
    lab[3, 4] = 2
    lab[6, 0] = -1  # not polyp: only values > 0 are
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / "l.nii"))
    np.testing.assert_array_equal(read_mask(tmp_path / "l.nii"), lab.T > 0)
    many = np.arange(35, dtype=np.uint8).reshape(7, 5) % 16  # 16 distinct values: still a label map
    nib.save(nib.Nifti1Image(many, np.eye(4)), str(tmp_path / "m16.nii"))
    np.testing.assert_array_equal(read_mask(tmp_path / "m16.nii"), many.T > 0)
    many17 = np.arange(35, dtype=np.uint8).reshape(7, 5) % 17
    nib.save(nib.Nifti1Image(many17, np.eye(4)), str(tmp_path / "m17.nii"))
    with pytest.raises(DataError, match="m17.nii: label volume has 17 distinct values"):
        read_mask(tmp_path / "m17.nii")
    f = lab.astype(np.float32)
    nib.save(nib.Nifti1Image(f, np.eye(4)), str(tmp_path / "f.nii"))  # float but integral: fine
    np.testing.assert_array_equal(read_mask(tmp_path / "f.nii"), lab.T > 0)
    f[2, 2] = 0.5
    nib.save(nib.Nifti1Image(f, np.eye(4)), str(tmp_path / "f2.nii"))
    with pytest.raises(DataError, match="f2.nii: label volume has non-integer values"):
        read_mask(tmp_path / "f2.nii")
    f[2, 2] = np.inf
    nib.save(nib.Nifti1Image(f, np.eye(4)), str(tmp_path / "f3.nii"))
    with pytest.raises(DataError, match="non-integer"):
        read_mask(tmp_path / "f3.nii")


def test_label_volume_shape_rules(tmp_path):
    import nibabel as nib

    lab = np.zeros((7, 5, 1, 1), np.uint8)
    lab[0, 4] = 1
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / "l.nii"))
    want = np.zeros((5, 7), bool)
    want[4, 0] = True
    np.testing.assert_array_equal(read_mask(tmp_path / "l.nii", expected_hw=(5, 7)), want)
    with pytest.raises(DataError, match=r"l.nii: label volume size 7x5 \(WxH\) differs from its image's 5x7"):
        read_mask(tmp_path / "l.nii", expected_hw=(7, 5))
    nib.save(nib.Nifti1Image(np.zeros((7, 5, 2), np.uint8), np.eye(4)), str(tmp_path / "two.nii"))
    with pytest.raises(DataError, match=r"two.nii: label volume must be a single 2D slice, got shape \(7, 5, 2\)"):
        read_mask(tmp_path / "two.nii")
    (tmp_path / "junk.nrrd").write_bytes(b"NRRD0004\ngarbage")
    with pytest.raises(DataError, match="junk.nrrd: not a readable label volume"):
        read_mask(tmp_path / "junk.nrrd")


def test_label_volume_pixel_cap(tmp_path, monkeypatch):
    import nibabel as nib
    import nrrd

    lab = np.zeros((7, 5, 2), np.uint8)  # 7 x (5 * 2): 70 pixels
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / "l.nii"))
    nrrd.write(str(tmp_path / "l.nrrd"), lab, index_order="F")
    for name in ("l.nii", "l.nrrd"):
        monkeypatch.setattr(images, "MAX_PIXELS", 69)
        with pytest.raises(TooLarge, match=rf"{name}: label volume of 7x10 pixels is larger than the limit of 69"):
            read_mask(tmp_path / name)
        monkeypatch.setattr(images, "MAX_PIXELS", 70)
        with pytest.raises(DataError, match="single 2D slice"):  # under the cap: read, then refused as 3D
            read_mask(tmp_path / name)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_label_volume_trailing_bytes(tmp_path, dtype):
    """The compressed-size rule with the declared data counted in bytes (uint16: two per value)."""
    import nibabel as nib
    import nrrd

    lab = np.zeros((300, 200), dtype)
    lab[3, 4] = 1
    raw = 300 * 200 * np.dtype(dtype).itemsize
    limit = int(raw * 1.05 + 65536)
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / "l.nii"))
    nrrd.write(str(tmp_path / "l.nrrd"), lab, index_order="F")
    for name in ("l.nii", "l.nrrd"):
        path = tmp_path / name
        data = path.read_bytes()
        path.write_bytes(data + b"\0" * (limit - len(data)))
        assert read_mask(path).sum() == 1
        path.write_bytes(data + b"\0" * (limit - len(data) + 1))
        with pytest.raises(DataError, match=rf"{name}: file of {limit + 1} bytes for {raw} bytes of declared data"):
            read_mask(path)


@pytest.mark.parametrize("field", ["data file: other.raw", "datafile: other.raw", "byte skip: 10", "byteskip: 10",
                                   "line skip: 1", "lineskip: 1"])
def test_nrrd_detached_or_skipping_is_refused(tmp_path, field):
    (tmp_path / "other.raw").write_bytes(bytes(35))
    (tmp_path / "x.nrrd").write_bytes(f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 7 5\nencoding: raw\n{field}\n\n"
                                      .encode() + bytes(45))
    with pytest.raises(DataError, match="x.nrrd: NRRD with detached data or skips is not accepted"):
        read_mask(tmp_path / "x.nrrd")


def test_nrrd_without_sizes_is_unreadable(tmp_path):
    (tmp_path / "x.nrrd").write_bytes(b"NRRD0004\ntype: uint8\ndimension: 2\nencoding: raw\n\n" + bytes(35))
    with pytest.raises(DataError, match="x.nrrd: not a readable label volume"):
        read_mask(tmp_path / "x.nrrd")


@pytest.mark.parametrize("encoding", ["gzip", "bzip2", "raw"])
def test_compressed_nrrd_labels_read_and_inflating_ones_are_refused(tmp_path, encoding):
    """A real compressed label reads; the same header over data that inflates one byte past its declared
    size is refused (pynrrd would inflate it whole: bzip2 packs a GB of zeros into 785 bytes)."""
    import bz2
    import gzip

    import nrrd

    m = np.zeros((5, 7), np.uint8)
    m[1:3, 2:5] = 1
    nrrd.write(str(tmp_path / "ok.nrrd"), m.T, {"encoding": encoding}, index_order="F")
    assert np.array_equal(read_mask(tmp_path / "ok.nrrd"), m)
    if encoding == "raw":
        return
    pack = bz2.compress if encoding == "bzip2" else gzip.compress
    head = f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 7 5\nencoding: {encoding}\n\n".encode()
    (tmp_path / "big.nrrd").write_bytes(head + pack(bytes(36)))
    with pytest.raises(DataError, match="big.nrrd: NRRD .* data inflates past its declared 35 bytes"):
        read_mask(tmp_path / "big.nrrd")


def test_nifti_header_extensions_are_bounded(tmp_path):
    """A small header extension (a comment) reads; one past the header cap, one larger than the room before
    the data, and extensions with vox_offset 0 are refused before nibabel reads them."""
    import gzip

    import nibabel as nib

    from polypal.data.volume_checks import MAX_HEADER_BYTES

    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)  # (H, W, 3)
    img = nib.Nifti1Image(rgb.transpose(1, 0, 2)[:, :, None, None, :], np.eye(4))
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"drawn in Slicer"))
    nib.save(img, str(tmp_path / "ok.nii.gz"))
    assert np.array_equal(read_rgb(tmp_path / "ok.nii.gz"), rgb)

    def bomb(ext_bytes, vox_offset):
        hdr = nib.Nifti1Header()
        hdr.set_data_dtype(np.uint8)
        hdr.set_data_shape((6, 4, 1, 1, 3))
        hdr["vox_offset"] = vox_offset
        return gzip.compress(hdr.binaryblock + b"\x01\x00\x00\x00" + struct.pack("<ii", ext_bytes, 0)
                             + bytes(ext_bytes - 8) + bytes(72))

    def twisted(raw: bytes, sizeof_hdr: int | None = None, big_endian_dims: bool = False) -> bytes:
        """The same bomb with a header nibabel reads otherwise than a hand parser would: a wrong sizeof_hdr
        (nibabel fixes it to 348 by the n+1 magic), or dims in the other byte order (nibabel takes the byte
        order from dim[0])."""
        b = bytearray(gzip.decompress(raw))
        if sizeof_hdr is not None:
            b[0:4] = struct.pack("<i", sizeof_hdr)
        if big_endian_dims:
            b[40:56] = struct.pack(">8h", *struct.unpack("<8h", bytes(b[40:56])))
            b[108:112] = struct.pack(">f", 352 + 16)
        return gzip.compress(bytes(b))

    big = bomb(1 << 16, 352 + 16)
    for name, data in (("far", bomb(MAX_HEADER_BYTES + 16, 352 + MAX_HEADER_BYTES + 16)), ("large", big),
                       ("zero", bomb(1 << 16, 0)), ("sizeof0", twisted(big, 0)), ("sizeof540", twisted(big, 540)),
                       ("endian", twisted(big, big_endian_dims=True))):
        (tmp_path / f"{name}.nii.gz").write_bytes(data)
        for reader in (read_rgb, read_mask):
            with pytest.raises(DataError, match=f"{name}.nii.gz: (NIfTI header extensions past .*refused|not a "
                                                f"readable .*volume)"):
                reader(tmp_path / f"{name}.nii.gz")


# ------------------------------------------------------------------ folders.py


def test_list_images_filters_and_sorts(tmp_path):
    for n in ("b.PNG", "a.jpg", "c.tiff", "d.txt", "e.nii.gz"):
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()  # a folder named like an image
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.tiff"]
    with pytest.raises(DataError, match="a.jpg: not a directory"):
        list_images(tmp_path / "a.jpg")


def test_find_pairs_matches_masks_by_stem_in_any_label_format(tmp_path):
    img = np.zeros((4, 5, 3), np.uint8)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    m = np.zeros((4, 5), np.uint8)
    m[0, 0] = 1
    for stem, mask_name in (("a", "a.JPG"), ("b", "b.nii.gz"), ("c", "c.png"), ("d", "d.nrrd")):
        Image.fromarray(img).save(tmp_path / "images" / f"{stem}.png")
        if mask_name.endswith(".JPG"):
            Image.fromarray(m * 255).save(tmp_path / "masks" / mask_name, format="JPEG", quality=100)
        else:
            write_label(m, tmp_path / "masks" / mask_name)
    pairs = find_pairs(tmp_path)
    assert [(p.name, q.name) for p, q in pairs] == [("a.png", "a.JPG"), ("b.png", "b.nii.gz"), ("c.png", "c.png"),
                                                    ("d.png", "d.nrrd")]
    fs = load_folder(tmp_path, 4)
    assert fs.masks is not None and fs.masks.shape == (4, 4, 4)
    assert [bool(fs.masks[i, 0, 0]) for i in range(4)] == [True] * 4
    assert int(fs.masks.sum()) == 4


def test_find_pairs_errors(tmp_path):
    with pytest.raises(DataError, match="nowhere: dataset folder does not exist"):
        find_pairs(tmp_path / "nowhere")
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="images: no images"):
        find_pairs(tmp_path)
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    with pytest.raises(DataError, match="masks: no masks/ folder beside images/"):  # there is no masks/ folder
        find_pairs(tmp_path)
    assert [(p.name, q) for p, q in find_pairs(tmp_path, require_masks=False)] == [("a.png", None)]


def test_frameset_subset_and_index():
    fs = FrameSet(names=["a", "b", "c"], images=np.arange(3).reshape(3, 1, 1, 1).astype(np.uint8),
                  masks=np.array([True, False, True]).reshape(3, 1, 1), original_hw=np.array([[1, 2], [3, 4], [5, 6]]),
                  size=1, paths=["pa", "pb", "pc"])
    assert len(fs) == 3
    sub = fs.subset([2, 0])
    assert sub.names == ["c", "a"] and sub.paths == ["pc", "pa"] and sub.size == 1
    np.testing.assert_array_equal(sub.images.ravel(), [2, 0])
    np.testing.assert_array_equal(sub.masks.ravel(), [True, True])
    np.testing.assert_array_equal(sub.original_hw, [[5, 6], [1, 2]])
    np.testing.assert_array_equal(fs.index_of(["c", "a", "b"]), [2, 0, 1])
    bare = FrameSet(names=["a", "b"], images=np.zeros((2, 1, 1, 3), np.uint8), masks=None,
                    original_hw=np.zeros((2, 2)), size=1)
    sub = bare.subset([1])
    assert sub.masks is None and sub.paths == [] and sub.names == ["b"]


def test_load_frame_resizes_both(tmp_path):
    rgb = np.zeros((6, 4, 3), np.uint8)
    rgb[:3] = 90
    Image.fromarray(rgb).save(tmp_path / "f.png")
    m = np.zeros((6, 4), np.uint8)
    m[3:] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    im, mask, hw = load_frame(tmp_path / "f.png", tmp_path / "m.png", 2)
    assert tuple(hw) == (6, 4)
    assert (im[0, :, 0] > 60).all() and (im[1, :, 0] < 30).all()  # top half bright (antialiased)
    np.testing.assert_array_equal(mask, [[False, False], [True, True]])
    im2, none, hw2 = load_frame(tmp_path / "f.png", None, 3)
    assert none is None and im2.shape == (3, 3, 3) and tuple(hw2) == (6, 4)


def test_load_folder_with_some_masks_missing(tmp_path):
    (tmp_path / "labels" / "final").mkdir(parents=True)
    for n, v in (("a", 10), ("b", 20), ("c", 30)):
        Image.fromarray(np.full((6, 8, 3), v, np.uint8)).save(tmp_path / f"{n}.png")
    m = np.zeros((6, 8), np.uint8)
    m[:, :4] = 1
    write_label(m, tmp_path / "labels" / "final" / "b.png")
    fs = load_folder(tmp_path, 4, require_masks=False)
    assert fs.masks is None and fs.names == ["a", "b", "c"]
    np.testing.assert_array_equal(fs.images[:, 0, 0, 0], [10, 20, 30])
    np.testing.assert_array_equal(fs.original_hw, [[6, 8]] * 3)
    assert fs.paths == [str(tmp_path / f"{n}.png") for n in "abc"] and fs.size == 4
    for n in "ac":
        write_label(m, tmp_path / "labels" / "final" / f"{n}.png")
    fs = load_folder(tmp_path, 4, require_masks=False)
    np.testing.assert_array_equal(fs.masks[:, 0], [[True, True, False, False]] * 3)


def test_cache_is_keyed_by_size_and_keeps_missing_masks(tmp_path):
    (tmp_path / "labels" / "final").mkdir(parents=True)
    for n in "ab":
        Image.fromarray(np.full((6, 8, 3), 40, np.uint8)).save(tmp_path / f"{n}.png")
    write_label(np.ones((6, 8), np.uint8), tmp_path / "labels" / "final" / "a.png")
    cache = tmp_path.parent / (tmp_path.name + "-cache")
    first = load_folder(tmp_path, 4, cache_dir=cache, require_masks=False)
    again = load_folder(tmp_path, 4, cache_dir=cache, require_masks=False)
    assert again.masks is None and first.masks is None and again.names == ["a", "b"] and again.size == 4
    assert again.paths == first.paths == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    np.testing.assert_array_equal(again.images, first.images)
    other = load_folder(tmp_path, 2, cache_dir=cache, require_masks=False)
    assert other.images.shape == (2, 2, 2, 3)
    names = sorted(p.name for p in cache.iterdir())
    assert len(names) == 2 and all(n.startswith(f"frames-{tmp_path.name}-") and n.endswith(".npz") for n in names)
    assert {n.split("-")[-2] for n in names} == {"2", "4"}
    write_label(np.ones((6, 8), np.uint8), tmp_path / "labels" / "final" / "b.png")  # a new label: a new key
    with_masks = load_folder(tmp_path, 4, cache_dir=cache, require_masks=False)
    assert with_masks.masks is not None and with_masks.masks.all()
    assert len(list(cache.iterdir())) == 3


def test_progress_bar_loads_the_same(tmp_path, capsys):
    Image.fromarray(np.full((6, 8, 3), 40, np.uint8)).save(tmp_path / "a.png")
    fs = load_folder(tmp_path, 4, require_masks=False, progress=True)
    assert fs.names == ["a"] and (fs.images == 40).all()
    assert f"decode {tmp_path.name}" in capsys.readouterr().err


# ------------------------------------------------------------------ more boundaries (mutation survivors)


def test_volume_frames_in_other_layouts(tmp_path):
    import nibabel as nib

    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(rgb.transpose(1, 0, 2)), np.eye(4)), str(tmp_path / "rgb3.nii"))
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgb3.nii"), rgb)  # (W, H, 3): no singleton axes
    g = np.arange(14, dtype=np.uint8).reshape(2, 7)  # a grey frame 2 pixels high: (W, H) = (7, 2)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(g.T), np.eye(4)), str(tmp_path / "g2.nii"))
    np.testing.assert_array_equal(read_rgb(tmp_path / "g2.nii"), np.repeat(g[..., None], 3, axis=2))


def test_one_row_label_volume(tmp_path):
    import nibabel as nib

    lab = np.zeros((7, 1, 1), np.uint8)  # W = 7, H = 1, one slice
    lab[2] = 1
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / "row.nii"))
    np.testing.assert_array_equal(read_mask(tmp_path / "row.nii"), [[False, False, True, False, False, False, False]])


def test_no_progress_bar_by_default(tmp_path, capsys):
    Image.fromarray(np.full((6, 8, 3), 40, np.uint8)).save(tmp_path / "a.png")
    load_folder(tmp_path, 4, require_masks=False)
    assert capsys.readouterr().err == ""


def test_cache_files_are_never_unpickled(tmp_path):
    """A cache entry holding Python objects (planted or corrupt) is refused, never unpickled."""
    Image.fromarray(np.full((6, 8, 3), 40, np.uint8)).save(tmp_path / "a.png")
    cache = tmp_path / "pcache"
    load_folder(tmp_path, 4, cache_dir=cache, require_masks=False)
    (entry,) = cache.iterdir()
    z = dict(np.load(entry))
    z["names"] = np.array(["a"], dtype=object)  # an object array: stored as a pickle
    np.savez(entry, **z)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_folder(tmp_path, 4, cache_dir=cache, require_masks=False)


def test_grey_volume_frames_three_pixels_wide_or_high(tmp_path):
    """A grey frame whose width or height is 3 is still grey (only a last axis of 3 on a 3-D+ volume is RGB)."""
    import nibabel as nib

    g = np.arange(15, dtype=np.uint8).reshape(5, 3)  # H = 5, W = 3
    nib.save(nib.Nifti1Image(np.ascontiguousarray(g.T), np.eye(4)), str(tmp_path / "w3.nii"))
    np.testing.assert_array_equal(read_rgb(tmp_path / "w3.nii"), np.repeat(g[..., None], 3, axis=2))
    h = np.arange(21, dtype=np.uint8).reshape(3, 7)  # H = 3, W = 7, with a slice axis
    nib.save(nib.Nifti1Image(np.ascontiguousarray(h.T)[:, :, None], np.eye(4)), str(tmp_path / "h3.nii"))
    np.testing.assert_array_equal(read_rgb(tmp_path / "h3.nii"), np.repeat(h[..., None], 3, axis=2))
    nib.save(nib.Nifti1Image(np.zeros((7, 1), np.uint8), np.eye(4)), str(tmp_path / "h1.nii"))  # one row
    with pytest.raises(DataError, match=r"h1.nii: not an 8-bit RGB frame: volume shape \(7, 1\)"):
        read_rgb(tmp_path / "h1.nii")


def test_label_volume_with_an_empty_axis_is_refused(tmp_path):
    (tmp_path / "z.nrrd").write_bytes(b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 7 5 0\nencoding: raw\n\n")
    with pytest.raises(DataError, match=r"z.nrrd: label volume must be a single 2D slice, got shape \(7, 5, 0\)"):
        read_mask(tmp_path / "z.nrrd")


def test_2d_grey_volume_frames_by_height(tmp_path, monkeypatch):
    """A 2-D (W, H) volume is a grey frame at any height, 3 included (an RGB frame needs (W, H, ..., 3));
    its pixels are counted as W x H against the size limit."""
    import nibabel as nib

    for h in (4, 3):
        g = np.arange(7 * h, dtype=np.uint8).reshape(h, 7)  # H = h, W = 7
        nib.save(nib.Nifti1Image(np.ascontiguousarray(g.T), np.eye(4)), str(tmp_path / f"h{h}.nii"))
        np.testing.assert_array_equal(read_rgb(tmp_path / f"h{h}.nii"), np.repeat(g[..., None], 3, axis=2))
    monkeypatch.setattr(images, "MAX_PIXELS", 20)
    with pytest.raises(TooLarge, match=r"image of 7x3 pixels"):
        read_rgb(tmp_path / "h3.nii")


def test_cache_dir_is_made_with_its_parents_and_named_by_a_16_digit_key(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    Image.fromarray(np.full((6, 8, 3), 40, np.uint8)).save(root / "a.png")
    cache = tmp_path / "not" / "yet"  # neither folder exists
    fs = load_folder(root, 4, cache_dir=cache, require_masks=False)
    (entry,) = cache.iterdir()
    assert re.fullmatch(r"frames-data-4-[0-9a-f]{16}\.npz", entry.name), entry.name
    again = load_folder(root, 4, cache_dir=cache, require_masks=False)
    np.testing.assert_array_equal(again.images, fs.images)


def test_float_label_volume_with_fractions_above_a_half_is_refused(tmp_path):
    import nibabel as nib

    f = np.zeros((7, 5), np.float32)
    f[2, 2] = 2.7  # rounds up: 2.7 < round(2.7)
    nib.save(nib.Nifti1Image(f, np.eye(4)), str(tmp_path / "f.nii"))
    with pytest.raises(DataError, match="f.nii: label volume has non-integer values"):
        read_mask(tmp_path / "f.nii")


def test_label_volume_larger_than_its_frame_is_refused(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((7, 5), np.uint8), np.eye(4)), str(tmp_path / "l.nii"))  # H 5, W 7
    for hw in ((4, 7), (5, 6)):
        with pytest.raises(DataError, match=rf"l.nii: label volume size 7x5 \(WxH\) differs from its image's "
                                            rf"{hw[1]}x{hw[0]}"):
            read_mask(tmp_path / "l.nii", expected_hw=hw)


@pytest.mark.parametrize("shape", [(7,), (1,)])
def test_one_dimensional_label_volume_is_refused(tmp_path, shape):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), np.eye(4)), str(tmp_path / "v.nii"))
    with pytest.raises(DataError, match=rf"v.nii: label volume must be a single 2D slice, got shape \({shape[0]},\)"):
        read_mask(tmp_path / "v.nii")


def test_masks_with_no_positive_value_are_empty(tmp_path):
    Image.fromarray(np.full((4, 5), -np.inf, np.float32)).save(tmp_path / "inf.tif")
    Image.fromarray(np.array([[-5, -1, -3]] * 2, np.int32)).save(tmp_path / "neg.tif")
    for name in ("inf.tif", "neg.tif"):
        m = read_mask(tmp_path / name)
        assert m.dtype == bool and not m.any(), name


def test_polyp_drawn_in_blue_or_green(tmp_path):
    for channel in (1, 2):
        rgb = np.zeros((4, 5, 3), np.uint8)
        rgb[1:3, 2:4, channel] = 255
        np.testing.assert_array_equal(read_mask(_save(tmp_path, rgb, f"c{channel}.png")), rgb[..., channel] > 0)


def test_resize_mask_pixels_are_pinned():
    """Nearest neighbour as PIL samples an 8-bit image (the masks the results in results/ were trained on).

    16 -> 22 rows puts output rows 5 and 16 exactly on a source border (4.0 and 12.0): the 8-bit path takes
    source rows 4 and 11 there (PIL's 16-bit path takes 12 for row 16)."""
    m = np.zeros((16, 14), bool)
    m[::2] = True  # the even source rows
    out = resize_mask(m, 22)
    want = np.array([1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 0, 1, 0, 0, 1, 0, 0, 1, 0, 1, 1, 0], bool)
    np.testing.assert_array_equal(out, np.repeat(want[:, None], 22, axis=1))


RGB24 = [("R", "u1"), ("G", "u1"), ("B", "u1")]


REFUSED_VOLUMES = {  # name: (volume, reader, what the error says after the file name)
    # an axis of length 0: refused as empty before its shape is looked at
    "no-slice": (np.zeros((7, 5, 0, 1, 3), np.uint8), read_rgb, r"empty image volume: shape \(7, 5, 0, 1, 3\)"),
    "empty-rgb": (np.zeros((0, 5, 1, 1, 3), np.uint8), read_rgb, r"empty image volume: shape \(0, 5, 1, 1, 3\)"),
    # refused by its dtype from the header, before its data is read (not for its shape or size afterwards)
    "grey16": (np.zeros((7, 5), np.uint16), read_rgb, r"not an 8-bit RGB frame: dtype uint16 \(polyp-al reads"),
    # NIfTI's RGB24 colour type loads as a structured dtype: not a size mismatch that reads like a bomb
    "rgb24": (np.zeros((30, 20), RGB24), read_rgb, r"not an 8-bit RGB frame: dtype \["),
    "complex-label": (np.full((7, 5), 0.5 + 0j, np.complex64), read_mask,
                      r"label volume of dtype complex64: a label map holds integers"),
}


@pytest.mark.parametrize("name", list(REFUSED_VOLUMES))
def test_volume_refused_with_a_clear_error(tmp_path, name):
    import nibabel as nib

    vol, read, message = REFUSED_VOLUMES[name]
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / f"{name}.nii"))
    with pytest.raises(DataError, match=re.escape(f"{name}.nii: ") + message):
        read(tmp_path / f"{name}.nii")


def test_nan_in_a_float_mask_is_refused(tmp_path):
    m = np.zeros((4, 5), np.float32)
    m[1, 1] = np.nan
    Image.fromarray(m).save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match="NaN"):
        read_mask(tmp_path / "nan.tif")


def test_label_volume_type_and_size_are_checked_from_the_header(tmp_path):
    """A complex or wrong-size label volume is refused from its header, before its data is read (a 261 KB
    complex128 label of 4096 x 4096 took 500 MB of server memory to decode before its size was compared).
    Shown with headers whose data is missing: reading the data would fail otherwise."""
    import nibabel as nib

    def header_only(name, shape, dtype):
        hdr = nib.Nifti1Header()
        hdr.set_data_dtype(dtype)
        hdr.set_data_shape(shape)
        hdr["vox_offset"] = 352
        (tmp_path / name).write_bytes(hdr.binaryblock + b"\x00" * 4)  # no data at all
        return tmp_path / name

    with pytest.raises(DataError, match="c.nii: label volume of dtype complex128"):
        read_mask(header_only("c.nii", (64, 48, 1), np.complex128), expected_hw=(48, 64))
    with pytest.raises(DataError, match=r"w.nii: label volume size 640x480 \(WxH\) differs from its image's 64x48"):
        read_mask(header_only("w.nii", (640, 480, 1), np.uint8), expected_hw=(48, 64))
    (tmp_path / "w.nrrd").write_bytes(b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 640 480\nencoding: raw\n\n")
    with pytest.raises(DataError, match=r"w.nrrd: label volume size 640x480 \(WxH\) differs"):
        read_mask(tmp_path / "w.nrrd", expected_hw=(48, 64))


def test_a_mask_image_of_the_wrong_size_is_refused_before_decoding(tmp_path):
    """A truncated PNG of the wrong size: refused by its size (read from the header), not by its data."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.zeros((480, 640), np.uint8)).save(buf, format="PNG")
    (tmp_path / "m.png").write_bytes(buf.getvalue()[:60])  # the header, not the data
    with pytest.raises(DataError, match=r"m.png: mask size 640x480 \(WxH\) differs from its image's 64x48"):
        read_mask(tmp_path / "m.png", expected_hw=(48, 64))


def test_jpeg_with_too_many_scans_is_refused_before_decoding(tmp_path):
    """A progressive JPEG whose last scan is repeated: 3000 scans made a 165 KB file take 30 s to decode.
    Over MAX_JPEG_SCANS it is refused before decoding; a normal progressive JPEG reads."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((32, 48, 3), 128, np.uint8)).save(buf, format="JPEG", progressive=True, quality=90)
    d = buf.getvalue()
    (tmp_path / "ok.jpg").write_bytes(d)
    assert read_rgb(tmp_path / "ok.jpg").shape == (32, 48, 3)
    segs, i = [], 2  # the segments; a scan runs to the next marker that is not stuffing or a restart
    while i < len(d):
        m = d[i + 1]
        if m == 0xD9:
            break
        n = struct.unpack(">H", d[i + 2:i + 4])[0]
        j = i + 2 + n
        if m == 0xDA:
            while not (d[j] == 0xFF and d[j + 1] != 0 and not 0xD0 <= d[j + 1] <= 0xD7):
                j += 1
        segs.append((m, d[i:j]))
        i = j
    last = [s for m, s in segs if m == 0xDA][-1]
    (tmp_path / "many.jpg").write_bytes(d[:2] + b"".join(s for _, s in segs) + last * 300 + b"\xff\xd9")
    with pytest.raises(DataError, match="many.jpg: JPEG of 3[01][0-9] scans"):
        read_rgb(tmp_path / "many.jpg")


def test_a_rotated_mask_is_compared_as_shown_and_a_jpeg_trailer_is_not_scans(tmp_path):
    """A mask stored 30x20 with EXIF orientation 6 is shown 20x30: it fits a 20-wide, 30-high frame (and
    is returned that shape), not a 30x20 one. A JPEG with 8 MB of other data after its end (a phone's
    motion photo) is not a JPEG of many scans."""
    import io

    m = np.zeros((20, 30), np.uint8)
    m[2:8, 3:12] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(m).save(tmp_path / "rot.jpg", format="JPEG", quality=100, exif=exif.tobytes())
    assert read_mask(tmp_path / "rot.jpg", expected_hw=(30, 20)).shape == (30, 20)
    with pytest.raises(DataError, match=r"rot.jpg: mask size 20x30 \(WxH\) differs from its image's 30x20"):
        read_mask(tmp_path / "rot.jpg", expected_hw=(20, 30))
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(buf, format="JPEG")
    trailer = np.random.default_rng(0).integers(0, 256, 8 << 20, np.uint8).tobytes()
    assert trailer.count(b"\xff\xda") > 100
    (tmp_path / "motion.jpg").write_bytes(buf.getvalue() + trailer)
    assert read_rgb(tmp_path / "motion.jpg").shape == (64, 64, 3)
