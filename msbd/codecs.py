"""The two image codecs PIL lacks: a 16-bit PNG writer and a 16-bit colour TIFF strip reader (issue 23).

PIL has no 16-bit RGB(A) or LA mode: it reads such PNG and TIFF files at 8 bits and cannot write them. The
output keeps the input's bit depth, so:
* `encode_png(pixels, ...)` writes [H, W, C] uint16 (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) as a PNG with
  optional iCCP (ICC profile), eXIf (EXIF) and tEXt / iTXt chunks (PNG spec 1.2 and its 2017 eXIf extension);
  rows use the Sub filter, so the file stays close to what libpng would write.
* `read_tiff16(img, path)` reads the strips of a 16-bit, chunky (PlanarConfiguration 1) TIFF whose tags PIL has
  parsed: uncompressed or deflate, with or without the horizontal predictor. Other layouts return None (the
  caller falls back to PIL's 8-bit reading).
16-bit colour PNG files are read with torchvision's libpng decoder (`torchvision.io.decode_png`).
"""
from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (gray, gray+alpha, RGB, RGBA)
EXIF_PREFIX = b"Exif\x00\x00"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _text_chunk(key: str, value: object) -> bytes:
    """tEXt for latin-1 text, iTXt (UTF-8) otherwise; non-string values as JSON (as msbd.io._png_info)."""
    if not 1 <= len(key) <= 79 or not key.isascii():
        raise ValueError(f"PNG text key must be 1-79 ASCII characters, got {key!r}")
    text = value if isinstance(value, str) else json.dumps(value)
    try:
        return _chunk(b"tEXt", key.encode("latin-1") + b"\x00" + text.encode("latin-1"))
    except UnicodeEncodeError:
        return _chunk(b"iTXt", key.encode("latin-1") + b"\x00\x00\x00\x00\x00" + text.encode("utf-8"))


def encode_png(pixels: np.ndarray, text_chunks: Mapping[str, object] | None = None,
               icc_profile: bytes | None = None, exif: bytes | None = None) -> bytes:
    """A 16-bit PNG file of pixels [H, W, C] uint16, C in 1..4, with optional ICC profile, EXIF and text."""
    if pixels.dtype != np.uint16 or pixels.ndim != 3 or pixels.shape[2] not in PNG_COLOUR_TYPES:
        raise ValueError(f"encode_png needs [H, W, 1..4] uint16, got {pixels.dtype} {pixels.shape}")
    height, width, channels = pixels.shape
    ihdr = struct.pack(">IIBBBBB", width, height, 16, PNG_COLOUR_TYPES[channels], 0, 0, 0)
    out = [PNG_SIGNATURE, _chunk(b"IHDR", ihdr)]
    if icc_profile:
        out.append(_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile)))
    if exif:
        out.append(_chunk(b"eXIf", exif[len(EXIF_PREFIX):] if exif.startswith(EXIF_PREFIX) else exif))
    out += [_text_chunk(key, value) for key, value in (text_chunks or {}).items()]
    raw = np.ascontiguousarray(pixels.astype(">u2")).view(np.uint8).reshape(height, width * channels * 2)
    bpp = channels * 2
    filtered = raw.copy()
    filtered[:, bpp:] -= raw[:, :-bpp]  # Sub filter (type 1): the byte minus the same byte of the pixel before
    rows = np.concatenate([np.ones((height, 1), np.uint8), filtered], axis=1)
    out += [_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)), _chunk(b"IEND", b"")]
    return b"".join(out)


def png_header(path: str | Path) -> tuple[int, int, bool] | None:
    """(bit depth, colour type, interlaced) from a PNG file's IHDR, or None when it is not a PNG."""
    with open(path, "rb") as handle:
        head = handle.read(33)
    if len(head) < 33 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return head[24], head[25], head[28] == 1


def read_png16(path: str | Path) -> np.ndarray:
    """[H, W, C] uint16 of a 16-bit PNG through libpng (torchvision), as stored (no EXIF orientation)."""
    import torch
    from torchvision.io import ImageReadMode, decode_png
    data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
    return decode_png(data, ImageReadMode.UNCHANGED).permute(1, 2, 0).numpy().astype(np.uint16)


def read_tiff16(img: Image.Image, path: str | Path) -> np.ndarray | None:
    """[H, W, S] uint16 of a 16-bit chunky TIFF with the tags PIL parsed; None for a layout not handled here."""
    tags = getattr(img, "tag_v2", None)
    if tags is None:
        return None
    samples = int(tags.get(277, 1))
    bits = tags.get(258, (1,))
    bits = tuple(bits) if isinstance(bits, (tuple, list)) else (bits,)
    compression, predictor = int(tags.get(259, 1)), int(tags.get(317, 1))
    sample_format = tags.get(339, 1)
    unsigned = set(sample_format if isinstance(sample_format, (tuple, list)) else (sample_format,)) == {1}
    if (set(bits) != {16} or not unsigned or int(tags.get(284, 1)) != 1 or 273 not in tags or 322 in tags
            or compression not in (1, 8, 32946) or predictor not in (1, 2)):
        return None
    width, height = int(tags[256]), int(tags[257])
    offsets, counts = tags[273], tags[279]
    offsets = offsets if isinstance(offsets, (tuple, list)) else (offsets,)
    counts = counts if isinstance(counts, (tuple, list)) else (counts,)
    with open(path, "rb") as handle:
        data = handle.read()
    strips = [data[o:o + c] for o, c in zip(offsets, counts)]
    if compression != 1:
        strips = [zlib.decompress(s) for s in strips]
    endian = "<" if getattr(tags, "_endian", "<") == "<" else ">"
    need = height * width * samples * 2
    buffer = b"".join(strips)
    if len(buffer) < need:
        return None
    values = np.frombuffer(buffer[:need], dtype=f"{endian}u2").reshape(height, width, samples).astype(np.uint16)
    if predictor == 2:  # horizontal differencing: each sample is stored minus its left neighbour, modulo 2^16
        values = np.cumsum(values, axis=1, dtype=np.uint16)
    return values
