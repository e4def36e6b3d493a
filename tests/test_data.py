import numpy as np
import pytest
from PIL import Image

from conftest import require_shared, write_dataset
from polypal.data import DataError, find_pairs, load_folder, normalize, read_mask, read_rgb


def test_kvasir_and_cvc_layouts(tmp_path):
    k = write_dataset(tmp_path / "k", 5, layout="kvasir")
    c = write_dataset(tmp_path / "c", 4, layout="cvc")
    fk = load_folder(k, 32)
    fc = load_folder(c, 16)
    assert fk.images.shape == (5, 32, 32, 3) and fk.images.dtype == np.uint8
    assert fk.masks.shape == (5, 32, 32) and fk.masks.dtype == bool and fk.masks.any()
    assert fc.images.shape == (4, 16, 16, 3)
    assert fk.names[0] == "frame000"
    assert tuple(fk.original_hw[0]) == (72, 88)


def test_monailabel_datastore_layout(tmp_path):
    ds = tmp_path / "studies"
    (ds / "labels" / "final").mkdir(parents=True)
    img = np.zeros((20, 30, 3), np.uint8)
    Image.fromarray(img).save(ds / "a.png")
    Image.fromarray(img).save(ds / "b.jpeg")
    m = np.zeros((20, 30), np.uint8)
    m[5:10, 5:10] = 1  # MONAI Label labels are 0/1
    Image.fromarray(m).save(ds / "labels" / "final" / "a.png")
    pairs = find_pairs(ds, require_masks=False)
    assert [(p.name, q.name if q else None) for p, q in pairs] == [("a.png", "a.png"), ("b.jpeg", None)]
    fs = load_folder(ds, 10, require_masks=False)
    assert fs.masks is None and len(fs) == 2
    assert read_mask(ds / "labels" / "final" / "a.png").sum() == 25


def test_grey_rgba_tif_become_rgb(tmp_path):
    Image.fromarray(np.full((8, 9), 100, np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.full((8, 9, 4), 100, np.uint8), "RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.full((8, 9, 3), 100, np.uint8)).save(tmp_path / "t.tif")
    for n in ("g.png", "a.png", "t.tif"):
        assert read_rgb(tmp_path / n).shape == (8, 9, 3)


def test_mask_threshold_ignores_jpeg_noise(tmp_path):
    m = np.zeros((100, 100), np.uint8)
    m[:50] = 255
    m[50:, :1] = 120  # 0.5% of the pixels: noise below the threshold
    m[50:, 1:2] = 129  # ...and above it
    Image.fromarray(m).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").sum() == 5050
    m[50:, :30] = 120  # 15% mid-grey: not a mask any more
    Image.fromarray(m).save(tmp_path / "m.png")
    with pytest.raises(DataError, match="photograph"):
        read_mask(tmp_path / "m.png")


def test_normalize_paper_formula():
    x = np.array([[[[0, 255, 127]]]], np.uint8)
    y = normalize(x)
    assert y.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(y[0, :, 0, 0], [-1.0, 1.0, 127 / 255 * 2 - 1], atol=1e-6)


def test_corrupt_image_names_file(tmp_path):
    root = write_dataset(tmp_path / "d", 3)
    bad = root / "images" / "frame001.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(DataError, match="frame001.jpg.*(corrupt|truncated|readable)"):
        load_folder(root, 16)


def test_non_image_file_names_file(tmp_path):
    root = write_dataset(tmp_path / "d", 2)
    (root / "images" / "frame000.jpg").write_text("hello, not an image")
    with pytest.raises(DataError, match="frame000.jpg: not a readable image"):
        load_folder(root, 16)


def test_wrong_size_mask_names_file(tmp_path):
    root = write_dataset(tmp_path / "d", 2)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "masks" / "frame001.jpg")
    with pytest.raises(DataError, match=r"frame001.jpg: mask size 5x5 \(WxH\) differs"):
        load_folder(root, 16)


def test_missing_mask_names_file(tmp_path):
    root = write_dataset(tmp_path / "d", 3)
    (root / "masks" / "frame002.jpg").unlink()
    with pytest.raises(DataError, match="frame002.jpg: missing mask"):
        load_folder(root, 16)


def test_cache_decodes_once_and_invalidates(tmp_path, monkeypatch):
    import collections

    import polypal.data.images as images
    import polypal.data.masks as masks

    opened = collections.Counter()
    real_open = images._open

    def counting_open(path, **kw):
        opened[str(path)] += 1
        return real_open(path, **kw)

    monkeypatch.setattr(images, "_open", counting_open)  # frames
    monkeypatch.setattr(masks, "_open", counting_open)  # masks
    root = write_dataset(tmp_path / "d", 3)
    cache = tmp_path / "cache"
    a = load_folder(root, 16, cache_dir=cache)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1
    # every image and every mask decoded exactly once
    want = {str(p) for p in (root / "images").iterdir()} | {str(p) for p in (root / "masks").iterdir()}
    assert set(opened) == want and set(opened.values()) == {1}
    opened.clear()
    b = load_folder(root, 16, cache_dir=cache)
    assert not opened  # served from the cache: nothing decoded
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert b.names == a.names and np.array_equal(b.original_hw, a.original_hw)
    # change a file: new key, new cache entry
    img = np.zeros((72, 88, 3), np.uint8)
    Image.fromarray(img).save(root / "images" / "frame000.jpg")
    c = load_folder(root, 16, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 2
    assert c.images[0].max() < 10


def test_real_frames_load():
    root = require_shared("kvasir-seg")
    from polypal.data import load_frame

    pairs = find_pairs(root)[:3]
    for img, mask in pairs:
        im, m, hw = load_frame(img, mask, 64)
        assert im.shape == (64, 64, 3) and m.shape == (64, 64)
        assert 0.0 < m.mean() < 1.0


def test_exif_rotated_frames_read_as_shown_and_one_frame_per_name(tmp_path):
    """A JPEG whose EXIF says "rotate 90" (a camera held sideways) is read as every viewer shows it, so a
    mask drawn on what the annotator saw fits it; two files of one name are refused by name."""
    stored = np.zeros((40, 48, 3), np.uint8)  # stored 48 wide, 40 high; shown rotated: 40 wide, 48 high
    stored[:10, :, 0] = 255  # a red band along the stored top
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(stored).save(tmp_path / "f.jpg", exif=exif, quality=95)
    shown = read_rgb(tmp_path / "f.jpg")
    assert shown.shape == (48, 40, 3)
    assert shown[:, -8:, 0].mean() > 200 and shown[:, :20, 0].mean() < 50  # the band is on the right as shown
    mask = np.zeros((48, 40), np.uint8)
    mask[:, -10:] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png", expected_hw=shown.shape[:2]).sum() == 480
    d = tmp_path / "ds"
    (d / "images").mkdir(parents=True)
    (d / "masks").mkdir()
    for ext in (".png", ".jpg"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "images" / f"f01{ext}")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / "masks" / "f01.png")
    with pytest.raises(DataError, match="same name as f01"):
        find_pairs(d)


def test_a_data_errors_problem_hides_the_path_only_where_it_stands_whole():
    """DataError.problem (what a client is told) replaces the server-side path with <file>, but only whole
    occurrences: a folder named "x" used to turn "does not exist" into "does not e<file>ist"."""
    from polypal.errors import DataError

    assert DataError("x", "does not exist: x").problem == "does not exist: <file>"
    e = DataError("/srv/tmp/up1.png", "cannot identify image file '/srv/tmp/up1.png'")
    assert e.problem == "cannot identify image file '<file>'" and str(e) == "/srv/tmp/up1.png: " + e.problem
    assert DataError("/srv/d", "/srv/d/m.png is missing").problem == "<file>/m.png is missing"
