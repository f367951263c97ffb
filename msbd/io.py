"""Reading the user's image and mask, and writing the result atomically.

Every user-fixable problem raises `msbd.errors.InputError` with one line that names the file and the
problem. Choices (the reference only accepts RGB images and mode-L masks, §3/§14.8):

Image (`load_image` -> [H, W, 3] uint8):
* EXIF orientation is applied (`ImageOps.exif_transpose`): we edit the image as it is displayed.
* Grayscale, palette, CMYK, YCbCr, LAB, HSV -> RGB through PIL. 16-bit / 32-bit grayscale ('I;16', 'I')
  is scaled to 8 bit with rounding (v / 257). Float ('F') is taken as 0..255 when max > 1, else 0..1.
* RGBA / LA / PA / palette with transparency: a fully opaque alpha is dropped silently; otherwise the image
  is composited over white (what a viewer shows on a white page) and a warning is issued. The output is
  RGB either way; the original alpha is not carried to the output.
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
Size limit: our own `max_pixels` (default 30000^2) replaces PIL's decompression-bomb limit.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

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


def _open(path: PathLike, what: str, max_pixels: int) -> tuple[Image.Image, tuple[int, int]]:
    """Open, size-check, fully decode and EXIF-transpose a file; returns (image, stored W x H size)."""
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
            return ImageOps.exif_transpose(img), (width, height)
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
                    allow_lossy: bool = False, quality: int = 95) -> Path:
    """Write an RGB image atomically: temp file in the same directory, fsync, os.replace.

    protected: input paths that must never be overwritten. text_chunks go to PNG tEXt/iTXt chunks (to a
    JSON comment for JPEG; dropped for WebP). Lossy extensions are refused unless allow_lossy=True.
    On any error the temp file is removed and an existing file at `path` is left untouched.
    """
    path = Path(path)
    _check_output(path, protected, allow_lossy)
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    text_chunks = dict(text_chunks or {})
    ext = path.suffix.lower()
    if ext == ".png":
        kwargs: dict = {"format": "PNG", "pnginfo": _png_info(text_chunks)}
    elif ext == ".webp":
        kwargs = {"format": "WEBP", "quality": quality}
    else:
        kwargs = {"format": "JPEG", "quality": quality, "comment": json.dumps(text_chunks)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            pil.save(handle, **kwargs)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


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
