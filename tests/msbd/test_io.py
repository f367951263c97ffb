"""Image/mask loading (every bad-input case -> one-line InputError) and the atomic PNG writer."""
import hashlib
import os

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from msbd import io as msbd_io
from msbd.errors import InputError
from msbd.io import load_image, load_mask, save_png_atomic

H, W = 30, 40


def rgb(seed=0, hw=(H, W)):
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def save(tmp_path, name, pil):
    path = tmp_path / name
    pil.save(path)
    return path


def square_mask(hw=(H, W), value=255):
    m = np.zeros(hw, dtype=np.uint8)
    m[5:15, 10:20] = value
    return m


def snapshot(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


# 1. Bad inputs: InputError with a one-line message naming the problem; nothing written ----------


def bad_cases(tmp_path):
    image_path = save(tmp_path, "image.png", Image.fromarray(rgb()))
    trunc = tmp_path / "truncated.png"
    trunc.write_bytes(image_path.read_bytes()[:200])
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    empty = save(tmp_path, "m0.png", Image.fromarray(square_mask(value=0)))
    dim = save(tmp_path, "m1.png", Image.fromarray(square_mask(value=100)))
    wide = save(tmp_path, "m2.png", Image.fromarray(square_mask((H, W + 10))))
    return [
        ("empty mask", lambda: load_mask(empty, (H, W)), "empty"),
        ("dim mask", lambda: load_mask(dim, (H, W)), "largest value 0.392"),
        ("mask size", lambda: load_mask(wide, (H, W)), "50x30 (WxH) but the image is 40x30"),
        ("truncated image", lambda: load_image(trunc), "truncated"),
        ("truncated mask", lambda: load_mask(trunc, (H, W)), "truncated"),
        ("non-image", lambda: load_image(text), "not an image"),
        ("missing", lambda: load_image(tmp_path / "nope.png"), "not found"),
        ("huge", lambda: load_image(image_path, max_pixels=W * H - 1), "above the limit"),
    ]


def test_every_bad_input_raises_one_clear_line(tmp_path):
    for name, call, expected in bad_cases(tmp_path):
        before = snapshot(tmp_path)
        with pytest.raises(InputError) as err:
            call()
        message = str(err.value)
        assert isinstance(err.value, ValueError), name
        assert expected in message and "\n" not in message, (name, message)
        assert snapshot(tmp_path) == before, name  # inputs unchanged, no output written


def test_exif_rotated_image_and_mask_hint(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = tmp_path / "photo.png"
    Image.fromarray(rgb(1)).save(path, exif=exif)
    image = load_image(path)
    assert image.shape == (W, H, 3)  # displayed: 30 wide, 40 tall
    assert np.array_equal(image, np.rot90(rgb(1), k=-1))
    ok = save(tmp_path, "ok.png", Image.fromarray(square_mask((W, H))))
    assert load_mask(ok, image.shape[:2]).shape == (W, H)
    stored = save(tmp_path, "stored.png", Image.fromarray(square_mask((H, W))))
    with pytest.raises(InputError, match="EXIF"):
        load_mask(stored, image.shape[:2])


# 2. Accepted conversions --------------------------------------------------------------------------


def expected_square(hw=(H, W)):
    return square_mask(hw) > 0


@pytest.mark.parametrize("kind", ["L", "01", "1", "RGB-red", "RGBA-alpha", "RGBA-opaque", "P", "I16", "LA"])
def test_mask_modes(tmp_path, kind):
    sq = square_mask()
    if kind == "L":
        pil = Image.fromarray(sq)
    elif kind == "01":
        pil = Image.fromarray((sq > 0).astype(np.uint8))
    elif kind == "1":
        pil = Image.fromarray(sq).convert("1")
    elif kind == "RGB-red":
        pil = Image.fromarray(np.stack([sq, 0 * sq, 0 * sq], -1))
    elif kind == "RGBA-alpha":  # strokes on a transparent layer, colour everywhere white
        pil = Image.fromarray(np.dstack([np.full((H, W, 3), 255, np.uint8), sq]), "RGBA")
    elif kind == "RGBA-opaque":  # constant alpha: the colour decides
        pil = Image.fromarray(np.dstack([sq, sq, sq, np.full((H, W), 255, np.uint8)]), "RGBA")
    elif kind == "P":
        pil = Image.fromarray(np.stack([sq] * 3, -1)).convert("P")
    elif kind == "I16":
        pil = Image.fromarray(sq.astype(np.uint16) * 257)
    else:
        pil = Image.fromarray(np.dstack([0 * sq, sq]), "LA")
    soft = load_mask(save(tmp_path, "mask.png", pil), (H, W))
    assert soft.dtype == np.float32 and soft.shape == (H, W)
    assert np.array_equal(soft >= 0.5, expected_square()), kind
    assert soft.max() == 1.0


def test_mask_soft_values_kept_and_16bit_threshold(tmp_path):
    sq = square_mask().astype(np.uint16) * 257
    sq[0, 0] = 30000  # 0.458 of full scale: soft, below the threshold
    soft = load_mask(save(tmp_path, "m16.png", Image.fromarray(sq)), (H, W))
    assert abs(soft[0, 0] - 30000 / 65535) < 1e-6 and soft[0, 0] < 0.5
    grey = square_mask()
    grey[0, 0] = 100
    soft = load_mask(save(tmp_path, "mg.png", Image.fromarray(grey)), (H, W))
    assert abs(soft[0, 0] - 100 / 255) < 1e-6


def test_image_modes(tmp_path):
    base = rgb(2)
    assert np.array_equal(load_image(save(tmp_path, "a.png", Image.fromarray(base))), base)
    opaque = np.dstack([base, np.full((H, W), 255, np.uint8)])
    assert np.array_equal(load_image(save(tmp_path, "b.png", Image.fromarray(opaque, "RGBA"))), base)
    clear = opaque.copy()
    clear[..., 3] = 0
    clear[0, 0, 3] = 255
    with pytest.warns(UserWarning, match="white"):
        out = load_image(save(tmp_path, "c.png", Image.fromarray(clear, "RGBA")))
    assert np.array_equal(out[0, 0], base[0, 0]) and (out[1:] == 255).all()
    grey = base[..., 0]
    assert np.array_equal(load_image(save(tmp_path, "d.png", Image.fromarray(grey))), np.stack([grey] * 3, -1))
    deep = (grey.astype(np.uint16) * 257)
    assert np.array_equal(load_image(save(tmp_path, "e.png", Image.fromarray(deep)))[..., 0], grey)
    la = Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA")
    assert np.array_equal(load_image(save(tmp_path, "f.png", la))[..., 1], grey)
    pal = Image.fromarray(base).convert("P")
    assert np.array_equal(load_image(save(tmp_path, "g.png", pal)), np.asarray(pal.convert("RGB")))
    cmyk = Image.fromarray(base).convert("CMYK")
    out = load_image(save(tmp_path, "h.jpg", cmyk))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8


def test_our_pixel_limit_replaces_pils(tmp_path, monkeypatch):
    path = save(tmp_path, "a.png", Image.fromarray(rgb()))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL alone would refuse 1200 px as a bomb
    assert load_image(path).shape == (H, W, 3)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored
    assert msbd_io.MAX_PIXELS == 30000 ** 2


# 3. Atomic saving ---------------------------------------------------------------------------------


def test_save_png_with_text_chunks(tmp_path):
    out = save_png_atomic(rgb(3), tmp_path / "out.png", {"prompt": "a cat", "note": "Gruß 猫", "seed": 7})
    with Image.open(out) as img:
        assert np.array_equal(np.asarray(img), rgb(3))
        assert img.text == {"prompt": "a cat", "note": "Gruß 猫", "seed": "7"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_save_refuses_inputs_lossy_and_unknown(tmp_path):
    image_path = save(tmp_path, "in.png", Image.fromarray(rgb()))
    alias = tmp_path / "alias.png"
    os.symlink(image_path, alias)
    before = snapshot(tmp_path)
    for target in (image_path, alias, tmp_path / "." / "in.png"):
        with pytest.raises(InputError, match="overwrite input"):
            save_png_atomic(rgb(1), target, {}, protected=[image_path])
    with pytest.raises(InputError, match="lossy"):
        save_png_atomic(rgb(1), tmp_path / "out.jpg")
    with pytest.raises(InputError, match="extension"):
        save_png_atomic(rgb(1), tmp_path / "out.bmp")
    with pytest.raises(InputError, match="directory"):
        save_png_atomic(rgb(1), tmp_path / "missing" / "out.png")
    assert snapshot(tmp_path) == before
    jpg = save_png_atomic(rgb(1), tmp_path / "out.jpg", {"seed": 1}, allow_lossy=True)
    with Image.open(jpg) as img:
        assert img.format == "JPEG" and b"seed" in img.info.get("comment", b"")


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    save_png_atomic(rgb(4), target)
    before = snapshot(tmp_path)

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_png_atomic(rgb(5), target)
    with pytest.raises(RuntimeError):
        save_png_atomic(rgb(5), tmp_path / "new.png")
    assert snapshot(tmp_path) == before  # old output intact, no temp file, no new file
    monkeypatch.undo()
    with Image.open(target) as img:
        assert np.array_equal(np.asarray(img), rgb(4))


def test_png_info_rejects_bad_keys():
    with pytest.raises(ValueError):
        msbd_io._png_info({"": "x"})
    assert isinstance(msbd_io._png_info({"k": "v"}), PngImagePlugin.PngInfo)


def test_png_compress_level_changes_the_file_not_the_pixels(tmp_path):
    from msbd.io import load_image, save_png_atomic
    rng = np.random.default_rng(0)
    image = (np.cumsum(rng.integers(0, 3, (96, 128, 3)), axis=1) % 256).astype(np.uint8)   # compressible
    fast, small = save_png_atomic(image, tmp_path / "fast.png", compress_level=1), \
        save_png_atomic(image, tmp_path / "small.png", compress_level=9)
    assert np.array_equal(load_image(fast), image) and np.array_equal(load_image(small), image)
    assert fast.stat().st_size > small.stat().st_size
