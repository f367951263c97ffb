"""The output keeps what the input had (issue 23 item 13): bit depth, alpha, ICC profile, EXIF; outside the mask
the output's values equal the input file's at its own bit depth. Edits run on the tiny random test models."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from _pipeline_helpers import tiny_config
from msbd.cli_edit import edit
from msbd.codecs import encode_png, read_png16
from msbd.io import load_image, load_source
from msbd.models import build_bundle

H, W = 80, 96


@pytest.fixture(scope="module")
def bundle():
    return build_bundle("tiny-test", seed=0)


@pytest.fixture
def mask_path(tmp_path):
    mask = np.zeros((H, W), np.uint8)
    mask[20:50, 30:70] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path / "mask.png"


def _edit(bundle, image_path, mask_path, tmp_path):
    out = tmp_path / "out.png"
    config = tiny_config(first_stage__steps=2, first_stage__batch=1, first_stage__repaint_steps=0)
    edit(image_path, mask_path, "a red cube", out, config, bundle, progress=False)
    return out


def _inside(hw=(H, W)):
    inside = np.zeros(hw, bool)
    inside[20:50, 30:70] = True
    return inside


def _check_kept(out: np.ndarray, src: np.ndarray):
    assert out.dtype == src.dtype and out.shape == src.shape
    assert np.array_equal(out[~_inside()], src[~_inside()])      # the input file's own values, own depth
    assert not np.array_equal(out[_inside()], src[_inside()])    # and an edit inside


def _tiff16(values: np.ndarray, deflate: bool) -> bytes:
    """A little-endian 16-bit chunky TIFF, one strip: uncompressed, or deflate with the horizontal predictor."""
    height, width, samples = values.shape
    data = values.astype("<u2")
    if deflate:
        data = np.concatenate([data[:, :1], np.diff(data, axis=1)], axis=1).astype("<u2")  # wraps modulo 2^16
    strip = data.tobytes()
    strip = zlib.compress(strip) if deflate else strip
    tags = [(256, 3, width), (257, 3, height), (258, 3, 16), (259, 3, 8 if deflate else 1),
            (262, 3, 2 if samples >= 3 else 1), (273, 4, 0), (277, 3, samples), (278, 3, height),
            (279, 4, len(strip)), (284, 3, 1)] + ([(317, 3, 2)] if deflate else []) + \
        ([(338, 3, 2)] if samples in (2, 4) else [])
    ifd_offset = 8
    bits_offset = ifd_offset + 2 + 12 * len(tags) + 4
    strip_offset = bits_offset + 2 * samples
    entries = b""
    for tag, kind, value in tags:
        if tag == 258 and samples > 1:
            entries += struct.pack("<HHII", tag, kind, samples, bits_offset)
        elif tag == 273:
            entries += struct.pack("<HHII", tag, kind, 1, strip_offset)
        else:
            entries += struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3
                                                            else struct.pack("<I", value))
    return (b"II*\x00" + struct.pack("<I", ifd_offset) + struct.pack("<H", len(tags)) + entries
            + struct.pack("<I", 0) + struct.pack(f"<{samples}H", *[16] * samples) + strip)


def test_16_bit_rgb_png_keeps_its_depth(bundle, mask_path, tmp_path):
    src = np.random.default_rng(0).integers(0, 65536, (H, W, 3)).astype(np.uint16)
    (tmp_path / "in.png").write_bytes(encode_png(src))
    assert np.array_equal(read_png16(tmp_path / "in.png"), src)  # libpng reads what encode_png wrote
    out = read_png16(_edit(bundle, tmp_path / "in.png", mask_path, tmp_path))
    _check_kept(out, src)
    assert (out[_inside()] % 257 == 0).all()  # the edited 8-bit values, scaled to 16 bits


def test_16_bit_grayscale_png_keeps_its_depth(bundle, mask_path, tmp_path):
    src = np.random.default_rng(1).integers(0, 65536, (H, W)).astype(np.uint16)
    Image.fromarray(src).save(tmp_path / "in.png")
    with Image.open(_edit(bundle, tmp_path / "in.png", mask_path, tmp_path)) as saved:
        assert saved.mode.startswith("I")
        out = np.asarray(saved).astype(np.uint16)
    _check_kept(out, src)


@pytest.mark.parametrize("deflate", [False, True])
@pytest.mark.parametrize("samples", [3, 4])
def test_16_bit_tiff_keeps_its_depth(bundle, mask_path, tmp_path, deflate, samples):
    src = np.random.default_rng(2).integers(0, 65536, (H, W, samples)).astype(np.uint16)
    (tmp_path / "in.tif").write_bytes(_tiff16(src, deflate))
    assert np.array_equal(load_source(tmp_path / "in.tif").pixels, src)
    out = read_png16(_edit(bundle, tmp_path / "in.tif", mask_path, tmp_path))
    _check_kept(out, src)
    if samples == 4:
        assert np.array_equal(out[..., 3], src[..., 3])  # alpha kept everywhere


def test_rgba_with_varying_alpha_keeps_its_alpha(bundle, mask_path, tmp_path):
    rng = np.random.default_rng(3)
    src = rng.integers(0, 256, (H, W, 4)).astype(np.uint8)
    src[..., 3] = np.linspace(0, 255, W).astype(np.uint8)[None, :]  # transparent left, opaque right
    Image.fromarray(src, "RGBA").save(tmp_path / "in.png")
    with pytest.warns(UserWarning, match="white"):
        out_path = _edit(bundle, tmp_path / "in.png", mask_path, tmp_path)
    with Image.open(out_path) as saved:
        assert saved.mode == "RGBA"
        out = np.asarray(saved)
    _check_kept(out, src)
    assert np.array_equal(out[..., 3], src[..., 3])


def test_icc_profile_and_exif_are_kept_orientation_normalised(bundle, mask_path, tmp_path):
    """An sRGB profile and EXIF (camera make, orientation 6: stored 96 x 80, displayed 80 x 96)."""
    stored = np.random.default_rng(4).integers(0, 256, (W, H, 3)).astype(np.uint8)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F], exif[0x0112] = "msbd test camera", 6
    Image.fromarray(stored).save(tmp_path / "in.png", icc_profile=icc, exif=exif.tobytes())
    displayed = load_image(tmp_path / "in.png")
    assert displayed.shape == (H, W, 3)
    with Image.open(_edit(bundle, tmp_path / "in.png", mask_path, tmp_path)) as saved:
        assert saved.info.get("icc_profile") == icc
        assert saved.getexif()[0x010F] == "msbd test camera" and saved.getexif()[0x0112] == 1
        out = np.asarray(saved)
    _check_kept(out, displayed)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_source_is_oriented_as_load_image(tmp_path, orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "in.png", exif=exif.tobytes())
    source = load_source(tmp_path / "in.png")
    assert np.array_equal(source.pixels, load_image(tmp_path / "in.png"))
    with Image.open(tmp_path / "in.png") as img:
        assert np.array_equal(source.pixels, np.asarray(ImageOps.exif_transpose(img)))


@pytest.mark.parametrize("channels, dtype", [(4, np.uint16), (3, np.uint8), (1, np.uint16)])
def test_output_like_converts_only_the_edited_pixels(channels, dtype):
    """The output is the source outside the edit and the converted edit inside, and building it costs one copy of
    the source plus the edited pixels (a whole-image uint32 conversion of the edit was 12 B a pixel, twice)."""
    import tracemalloc

    from msbd.io import SourceImage, _luma, output_like
    rng = np.random.default_rng(0)
    h, w = 600, 500
    pixels = rng.integers(0, np.iinfo(dtype).max, (h, w, channels), dtype=dtype)
    edited = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    edit = np.zeros((h, w), bool)
    edit[100:160, 200:260] = True
    tracemalloc.start()
    out = output_like(SourceImage(pixels, None, None), edited, edit)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1.2 * pixels.nbytes, (peak, pixels.nbytes)
    np.testing.assert_array_equal(out[~edit], pixels[~edit])
    scale = 257 if dtype == np.uint16 else 1
    want = edited[edit].astype(np.uint32) if channels >= 3 else _luma(edited[edit])[..., None]
    np.testing.assert_array_equal(out[edit][:, :want.shape[1]], (want * scale).astype(dtype))
    if channels == 4:
        np.testing.assert_array_equal(out[edit][:, 3], pixels[edit][:, 3])     # alpha: the source's
