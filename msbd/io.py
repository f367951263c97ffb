"""Reading the user's image and mask, and writing the result atomically.

Every user-fixable problem raises `msbd.errors.InputError` with one line that names the file and the
problem. Choices (the reference only accepts RGB images and mode-L masks, §3/§14.8):

Image (`load_image` -> [H, W, 3] uint8):
* EXIF orientation is applied (`ImageOps.exif_transpose`): we edit the image as it is displayed.
* Grayscale, palette, CMYK, YCbCr, LAB, HSV -> RGB through PIL. 16-bit / 32-bit grayscale ('I;16', 'I')
  is scaled to 8 bit with rounding (v / 257). Float ('F') is taken as 0..255 when max > 1, else 0..1.
* RGBA / LA / PA / palette with transparency: a fully opaque alpha is dropped silently; otherwise the image
  is composited over white (what a viewer shows on a white page) and a warning is issued. This is what the
  model sees; the edit's output keeps the alpha channel (see "Output").
Mask (`load_mask` -> [H, W] float32 soft values in [0, 1]; pixels >= threshold are edited):
* Mode L: value / 255. If the largest value is 1, the mask is read as 0/1 binary.
* Mode 1 (bilevel): 0/1. 16/32-bit integer or float ('I;16', 'I', 'F'): read as 0/1 when the max is <= 1,
  as 8-bit values when the max is <= 255, else as 16-bit (value / 65535).
* RGB (and P, CMYK, ...): the maximum over the channels, so white *or coloured* strokes on black count.
* RGBA / LA / PA: the alpha channel when it varies (strokes painted on a transparent layer); when the alpha
  is constant it carries no information and the colour rule above is used instead.
* EXIF orientation of the *mask file* is applied too (each file as displayed); a mask drawn on the
  displayed image carries no EXIF tag and is used as is. A mask that only matches the image's stored
  (unrotated) size gets a dedicated message.
* Reference binarisation: value >= 0.5 of full scale means edit. A mask without any such pixel is refused.
Output (`load_source` -> `SourceImage`, `output_like`, `save_png_atomic(..., icc_profile, exif)`; issue 23):
* The model edits the 8-bit RGB of `load_image`; the output is written in the input's own space: 8 or 16 bits
  per sample, gray or RGB, with its alpha channel, ICC profile and EXIF (orientation reset to 1, since the
  pixels are stored as displayed). Outside the mask its values are the input file's own, at its own depth;
  inside, the edited RGB is converted (x 257 to 16 bits, PIL's luma to gray). 16-bit colour PNG is read with
  libpng (torchvision), 16-bit colour TIFF strips here (`msbd.codecs`); PIL reads 8 bits of both.
* Modes with no PNG equivalent (palette, CMYK, YCbCr, LAB, HSV, float) give 8-bit RGB (RGBA for a palette with
  transparency); an ICC profile is kept only when it describes RGB (or gray) values.
Size limit: our own `max_pixels` (default 30000^2) replaces PIL's decompression-bomb limit.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from msbd.codecs import encode_png, png_header, read_png16, read_tiff16
from msbd.errors import InputError

MAX_PIXELS = 30000 * 30000
LOSSLESS_EXTENSIONS = {".png"}
LOSSY_EXTENSIONS = {".jpg", ".jpeg", ".webp"}
PathLike = str | os.PathLike


@contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Temporarily replace PIL's decompression-bomb limit by ours (we check the size ourselves)."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max(max_pixels, old or 0)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _open(path: PathLike, what: str, max_pixels: int, transpose: bool = True) -> tuple[Image.Image, tuple[int, int]]:
    """Open, size-check, fully decode and (unless transpose=False) EXIF-transpose a file; returns
    (image, stored W x H size)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    try:
        with _pixel_limit(max_pixels), Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise InputError(f"{what} {path} is {width}x{height} = {width * height / 1e6:.0f} MP, "
                                 f"above the limit of {max_pixels / 1e6:.0f} MP")
            img.load()
            return (ImageOps.exif_transpose(img) if transpose else img), (width, height)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{what} {path} is not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"{what} {path} cannot be decoded (truncated or corrupt file?): {err}") from None


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _high_bit_to_l(img: Image.Image) -> Image.Image:
    """'I;16' / 'I' / 'F' grayscale -> 8-bit 'L' (16-bit scaled by 1/257 with rounding)."""
    values = np.asarray(img, dtype=np.float64)
    scale = 257.0 if img.mode != "F" else (1.0 if values.max(initial=0) > 1 else 1 / 255)
    return Image.fromarray(np.clip(np.floor(values / scale + 0.5), 0, 255).astype(np.uint8), "L")


def _image_to_rgb(img: Image.Image, path: PathLike) -> np.ndarray:
    if img.mode.startswith("I") or img.mode == "F":
        img = _high_bit_to_l(img)
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            warnings.warn(f"image {path} has transparent pixels; compositing it over white", stacklevel=3)
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgba = Image.alpha_composite(white, rgba)
        img = rgba
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def load_image(path: PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as [H, W, 3] uint8 RGB, oriented as displayed (see module docstring)."""
    img, _ = _open(path, "image", max_pixels)
    return _image_to_rgb(img, path)


@dataclass
class SourceImage:
    """The input file's pixels at their own depth, oriented as displayed, and the metadata the output keeps."""

    pixels: np.ndarray              # [H, W, C] uint8 or uint16; C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA
    icc_profile: bytes | None       # kept when it describes the output's colour model (RGB or gray)
    exif: bytes | None              # EXIF with the orientation reset to 1: the pixels are stored as displayed


def load_source(path: PathLike, max_pixels: int = MAX_PIXELS) -> SourceImage:
    """Read an image file losslessly (module docstring: "Output"), oriented as `load_image` orients it."""
    img, _ = _open(path, "image", max_pixels, transpose=False)
    pixels = _source_pixels(img, path)
    pixels = np.ascontiguousarray(_orient(pixels, img.getexif().get(EXIF_ORIENTATION, 1)))
    return SourceImage(pixels, _matching_icc(img.info.get("icc_profile"), pixels.shape[2], path), _upright_exif(img))


def _source_pixels(img: Image.Image, path: PathLike) -> np.ndarray:
    """[H, W, C] uint8 / uint16 as stored; modes without a PNG equivalent become 8-bit RGB as in load_image."""
    if img.format == "PNG":
        header = png_header(path)
        if header is not None and header[0] == 16 and header[1] in (2, 4, 6):  # PIL would read 8 bits
            return read_png16(path)
    if img.format == "TIFF" and not img.mode.startswith("I"):
        values = read_tiff16(img, path)
        if values is not None and values.shape[2] in (2, 3, 4):
            return values
        if 16 in tuple(np.atleast_1d(img.tag_v2.get(258, 8))):
            warnings.warn(f"image {path}: this 16-bit TIFF layout is read at 8 bits per sample", stacklevel=3)
    if img.mode.startswith("I;16"):
        return np.asarray(img, dtype=np.uint16)[..., None]
    if img.mode == "I":
        values = np.asarray(img)
        if values.min(initial=0) >= 0 and values.max(initial=0) <= 65535:
            return values.astype(np.uint16)[..., None]
    if img.mode == "1":
        img = img.convert("L")
    if img.mode in ("L", "LA", "RGB", "RGBA"):
        values = np.asarray(img, dtype=np.uint8)
        return values[..., None] if values.ndim == 2 else values
    if _has_alpha(img):
        return np.asarray(img.convert("RGBA"), dtype=np.uint8)
    return _image_to_rgb(img, path)


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to [H, W, C], as ImageOps.exif_transpose does to a PIL image."""
    transforms = {
        2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }
    return transforms.get(orientation, lambda a: a)(pixels)


def _matching_icc(icc: bytes | None, channels: int, path: PathLike) -> bytes | None:
    """The ICC profile when its colour space (header bytes 16-20) is the output's: RGB or GRAY."""
    if not icc:
        return None
    if len(icc) >= 20 and icc[16:20] == (b"RGB " if channels >= 3 else b"GRAY"):
        return icc
    warnings.warn(f"image {path}: its ICC profile ({icc[16:20]!r}) does not describe the output's "
                  f"{'RGB' if channels >= 3 else 'gray'} values; it is not carried over", stacklevel=4)
    return None


# TIFF files keep their EXIF-like tags in IFD0 next to the layout tags: only these are carried over.
TIFF_EXIF_TAGS = (0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298)  # description, make, model, ...
EXIF_ORIENTATION, EXIF_IFD = 0x0112, 0x8769


def _upright_exif(img: Image.Image) -> bytes | None:
    """The file's EXIF as bytes with Orientation = 1 (None when it has none)."""
    exif = img.getexif()
    if img.format == "TIFF":
        kept = Image.Exif()
        for tag in TIFF_EXIF_TAGS:
            if tag in exif:
                kept[tag] = exif[tag]
        if exif.get_ifd(EXIF_IFD):
            kept[EXIF_IFD] = dict(exif.get_ifd(EXIF_IFD))
        exif = kept
    if not len(exif):
        return None
    if EXIF_ORIENTATION in exif:
        exif[EXIF_ORIENTATION] = 1
    return exif.tobytes()


def output_like(source: SourceImage, edited: np.ndarray, edit: np.ndarray) -> np.ndarray:
    """The edit in the source's space: the source's own values where `edit` is False; where True, the edited
    [H, W, 3] uint8 RGB converted (x 257 for 16 bits, PIL's luma for gray). Alpha is the source's everywhere."""
    pixels = source.pixels
    if edited.shape[:2] != pixels.shape[:2] or edit.shape != pixels.shape[:2]:
        raise ValueError(f"edited {edited.shape} / mask {edit.shape} do not match the source {pixels.shape}")
    rgb = edited[edit]                            # [N, 3]: only the edited pixels are converted (a whole-image
    values = rgb.astype(np.uint32) if pixels.shape[2] >= 3 else _luma(rgb)[..., None]   # uint32 copy was 12 B/px)
    if pixels.dtype == np.uint16:
        values = values * 257
    out = pixels.copy()
    out[edit, :values.shape[1]] = values.astype(pixels.dtype)
    return out


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma of uint8 RGB, rounded as PIL's convert('L') (16-bit fixed point)."""
    r, g, b = (rgb[..., k].astype(np.uint32) for k in range(3))
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


def _mask_values(img: Image.Image) -> np.ndarray:
    """Soft mask in [0, 1] from any PIL mode (module docstring gives the rules)."""
    if _has_alpha(img):
        alpha = np.asarray(img.convert("RGBA").getchannel("A"))
        if alpha.min() != alpha.max():
            return alpha.astype(np.float32) / 255
        img = img.convert("RGB")
    if img.mode == "1":
        return np.asarray(img, dtype=np.float32)
    if img.mode.startswith("I") or img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        top = values.max(initial=0)
        full = 1.0 if top <= 1 else 255.0 if top <= 255 else 65535.0
        return np.clip(values / full, 0, 1).astype(np.float32)
    if img.mode != "L":
        img = img.convert("RGB")
    values = np.asarray(img, dtype=np.uint8)
    if values.ndim == 3:
        values = values.max(axis=2)
    full = 1.0 if values.max() == 1 else 255.0  # 0/1 masks are binary masks, not near-black ones
    return values.astype(np.float32) / full


def load_mask(path: PathLike, image_hw: tuple[int, int], threshold: float = 0.5,
              max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a mask file as [H, W] float32 in [0, 1] (1 = edit); validates size and non-emptiness.

    image_hw: (height, width) of the loaded image, i.e. ``load_image(...).shape[:2]``.
    Binarise with ``mask >= threshold`` (the reference's rule, 0.5).
    """
    img, stored = _open(path, "mask", max_pixels)
    height, width = image_hw
    if (img.height, img.width) != (height, width):
        hint = ""
        if stored == (width, height) or (img.width, img.height) == (height, width):
            hint = " (it matches the image rotated by 90 degrees; check EXIF orientation)"
        raise InputError(f"mask {path} is {img.width}x{img.height} (WxH) but the image is {width}x{height}{hint}")
    soft = _mask_values(img)
    if not (soft >= threshold).any():
        raise InputError(f"mask {path} is empty: no pixel reaches {threshold:.0%} of full scale "
                         f"(largest value {soft.max():.3f}); white (255) marks the region to edit")
    return soft


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_output(path: Path, protected: Iterable[PathLike], allow_lossy: bool) -> None:
    ext = path.suffix.lower()
    if ext in LOSSY_EXTENSIONS and not allow_lossy:
        raise InputError(f"output {path} has a lossy extension {ext}; use .png (or allow_lossy=True)")
    if ext not in LOSSLESS_EXTENSIONS | LOSSY_EXTENSIONS:
        raise InputError(f"output {path} has unsupported extension {ext!r}; use .png")
    for other in protected:
        other = Path(other)
        if _same_file(path, other) or path.resolve() == other.resolve():
            raise InputError(f"refusing to overwrite input file {other} with the output")
    if not path.parent.is_dir():
        raise InputError(f"output directory does not exist: {path.parent}")


def _png_info(text_chunks: Mapping[str, object]) -> PngImagePlugin.PngInfo:
    """tEXt chunks for latin-1 values, iTXt (UTF-8) otherwise; non-string values as JSON."""
    info = PngImagePlugin.PngInfo()
    for key, value in text_chunks.items():
        if not 1 <= len(key) <= 79 or not key.isascii():
            raise ValueError(f"PNG text key must be 1-79 ASCII characters, got {key!r}")
        text = value if isinstance(value, str) else json.dumps(value)
        try:
            text.encode("latin-1")
            info.add_text(key, text)
        except UnicodeEncodeError:
            info.add_itxt(key, text)
    return info


def save_png_atomic(image: np.ndarray | Image.Image, path: PathLike,
                    text_chunks: Mapping[str, object] | None = None, protected: Iterable[PathLike] = (),
                    allow_lossy: bool = False, quality: int = 95, icc_profile: bytes | None = None,
                    exif: bytes | None = None, compress_level: int = 6) -> Path:
    """Write an image atomically: temp file in the same directory, fsync, os.replace.

    image: a PIL image or [H, W] / [H, W, C] uint8 (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA), or uint16 of the
    same layouts (PNG only, 16 bits per sample). protected: input paths that must never be overwritten.
    text_chunks go to PNG tEXt/iTXt chunks (to a JSON comment for JPEG; dropped for WebP); icc_profile and exif
    are embedded when given; compress_level is zlib's for 8-bit PNG (6, Pillow's default; 1 wrote a 6.3 MP render
    5x faster here, 18% larger). Lossy extensions are refused unless allow_lossy=True. On any error the temp file is
    removed and an existing file at `path` is left untouched.
    """
    path = Path(path)
    _check_output(path, protected, allow_lossy)
    text_chunks = dict(text_chunks or {})
    ext = path.suffix.lower()
    if isinstance(image, np.ndarray) and image.dtype == np.uint16:
        if ext != ".png":
            raise ValueError(f"16-bit images are written as PNG only, got {path}")
        pixels = image[..., None] if image.ndim == 2 else image
        data = encode_png(pixels, text_chunks, icc_profile, exif)
        _write_atomic(path, lambda handle: handle.write(data))
        return path
    if isinstance(image, Image.Image):
        pil = image
    else:
        array = np.asarray(image, dtype=np.uint8)
        pil = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)
    extra = {k: v for k, v in (("icc_profile", icc_profile), ("exif", exif)) if v}
    if ext == ".png":
        kwargs: dict = {"format": "PNG", "pnginfo": _png_info(text_chunks), "compress_level": compress_level,
                        **extra}
    elif ext == ".webp":
        kwargs = {"format": "WEBP", "quality": quality, **extra}
    else:
        kwargs = {"format": "JPEG", "quality": quality, "comment": json.dumps(text_chunks), **extra}
    _write_atomic(path, lambda handle: pil.save(handle, **kwargs))
    return path


def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
