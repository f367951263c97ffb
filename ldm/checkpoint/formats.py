"""Read a weights file or folder into one CompVis-layout state dict, whatever its format.

Formats, recognised from the content (not the suffix):
* "ckpt-zip": torch.save's zip format (.ckpt/.pt/.pth, torch >= 1.6), and
* "ckpt-legacy": the older torch.save stream; both are read with the restricted unpickler (no code runs);
* "safetensors": a flat dict with the CompVis names; a file whose metadata holds `msbd_overlay_base` (a file name
  in the same folder) is an overlay: the base is read first and the overlay's tensors replace or add to its own
  (how the toy inpainting UNet ships its fine-tuned tensors only, within the toy weight budget); one whose metadata
  holds `msbd_text_from` (a file in the same folder holding an open_clip CLIP) takes its text encoder from that
  CLIP's text tower, SD v1 style (how the toy UNet's frozen text encoder ships once, in toy-clip.safetensors),
  refusing a CLIP file other than the one it was exported beside (`msbd_text_from_sha256`);
* "diffusers": a folder with unet/, vae/ and text_encoder/ (safetensors or .bin, possibly sharded), whose keys
  are mapped to ours by `ldm.convert` and given the CompVis prefixes, so every format yields the same dict.
A CompVis `{"state_dict": {...}, ...}` checkpoint yields its state_dict; everything else in it is dropped.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ldm.checkpoint import unpickle
from ldm.checkpoint.components import TEXT_PREFIXES, prefixes
from ldm.checkpoint.errors import CheckpointError
from ldm.config import LDMConfig, get_preset
from ldm.convert.clip_text import clip_text_from_open_clip, clip_text_from_transformers, open_clip_text_from_transformers
from ldm.convert.unet import unet_from_diffusers
from ldm.convert.vae import vae_from_diffusers

StateDict = dict[str, torch.Tensor]
FORMATS = ("ckpt-zip", "ckpt-legacy", "safetensors", "diffusers")
DIFFUSERS_DIRS = {"unet": "unet", "vae": "vae", "text": "text_encoder"}
_WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")


def detect_format(path: str | os.PathLike) -> str:
    """One of FORMATS, from the folder layout or the first bytes of the file."""
    path = Path(path)
    if path.is_dir():
        if any((path / d).is_dir() for d in DIFFUSERS_DIRS.values()):
            return "diffusers"
        raise CheckpointError(f"{path} is a folder but not a diffusers model folder (no unet/, vae/ or "
                              "text_encoder/ inside)")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "ckpt-zip"
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "ckpt-legacy"
    raise CheckpointError(f"{path}: unrecognised weights format (expected a torch .ckpt/.pt/.pth, a .safetensors "
                          f"file or a diffusers folder; the file starts with {head[:8]!r})")


def load_pickled(path: str | os.PathLike) -> object:
    """torch.load with the restricted unpickler, zip or legacy format, on the CPU; no code from the file runs."""
    if os.getenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        raise CheckpointError(f"{path}: TORCH_FORCE_WEIGHTS_ONLY_LOAD is set, which makes torch refuse our own "
                              "restricted unpickler; unset it, or convert the file to .safetensors")
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        with zipfile.ZipFile(path) as archive:
            if any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in archive.namelist()):
                # torch.load would hand a TorchScript archive to torch.jit.load, which runs its code
                raise CheckpointError(f"{path} is a TorchScript archive (it holds code), not a weights file; refused")
    try:
        return torch.load(path, map_location="cpu", pickle_module=unpickle, weights_only=False, mmap=is_zip)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except Exception as e:  # corrupt or truncated files, pickles that are not torch checkpoints
        raise CheckpointError(f"{path}: cannot read as a PyTorch checkpoint ({type(e).__name__}: {e})") from None


def _tensor_dict(obj: object, source: str) -> StateDict:
    """The state dict inside a loaded checkpoint object: obj["state_dict"] or obj itself, tensors only."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a dict of tensors or a dict with 'state_dict', "
                              f"got {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} entries are not named tensors (first: {bad[:3]}); "
                              "is this a weights file?")
    return dict(obj)


OVERLAY_KEY = "msbd_overlay_base"
TEXT_FROM_KEY = "msbd_text_from"
TEXT_SHA_KEY = "msbd_text_from_sha256"         # of the linked CLIP file as exported beside it


_HASHES: dict[tuple, str] = {}
RACY_SECONDS = 2.0              # a file changed this recently may change again within its timestamp's resolution


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, remembered for the process while the file's (real path, inode, size, mtime,
    ctime) stay the same: the link check at load and the outputs' provenance hash a linked file once, and repeated
    edits (the app) do not rehash a checkpoint. A hash is remembered only when the file did not change while it was
    read and was last changed more than RACY_SECONDS ago (git's "racy clean" rule: a rewrite within one timestamp
    tick leaves the stat alone)."""
    real = os.path.realpath(path)

    def key() -> tuple:
        st = os.stat(real)
        return real, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    before = key()
    if before in _HASHES:
        return _HASHES[before]
    digest = _hash_bytes(real)
    if key() == before and time.time() - max(before[3], before[4]) / 1e9 > RACY_SECONDS:
        _HASHES[before] = digest
    return digest


def _hash_bytes(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def linked_files(path: str | os.PathLike) -> dict[str, Path]:
    """The files a safetensors checkpoint reads besides itself through its metadata links, by role: `overlay_base`,
    `text_from`, nested as `overlay_base.text_from`; {} for a file without links, another format or a folder.
    (For provenance; `read_state_dict` has validated the links.)"""
    out: dict[str, Path] = {}

    def walk(p: Path, prefix: str, seen: frozenset) -> None:
        with safe_open(os.fspath(p), "pt") as f:
            metadata = f.metadata() or {}
        for role, key in (("text_from", TEXT_FROM_KEY), ("overlay_base", OVERLAY_KEY)):
            target = p.parent / metadata[key] if key in metadata else None
            if target is None or target in seen or not target.is_file():
                continue
            out[prefix + role] = target
            if role == "overlay_base":
                walk(target, f"{prefix}{role}.", seen | {target})

    p = Path(path)
    if p.is_file() and detect_format(p) == "safetensors":
        walk(p, "", frozenset({p}))
    return out


def _linked(path: str | os.PathLike, name: str, what: str, seen: tuple[str, ...]) -> Path:
    """The file `name` beside `path`, which a metadata link (`what`) names; a bare file name, present, no loop."""
    linked = Path(path).parent / name
    if os.path.basename(name) != name:
        raise CheckpointError(f"{path} {what} {name!r}, which must be the name of another file in the same folder, "
                              f"not a path")
    if not linked.is_file() or str(linked) in seen:
        raise CheckpointError(f"{path} {what} {name!r}, which must be another file in the same folder "
                              f"({linked} {'is part of a loop' if str(linked) in seen else 'not found'})")
    return linked


def _read_safetensors(path: str | os.PathLike, _seen: tuple[str, ...] = ()) -> StateDict:
    try:
        with safe_open(os.fspath(path), "pt") as f:
            metadata = f.metadata() or {}
        state = load_file(os.fspath(path), device="cpu")
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read as safetensors ({type(e).__name__}: {e})") from None
    seen = (*_seen, str(path))
    if (text_from := metadata.get(TEXT_FROM_KEY)) is not None:
        clip_path = _linked(path, text_from, "takes its text encoder from", seen)
        expected = metadata.get(TEXT_SHA_KEY)
        if expected is not None and (found := sha256_file(clip_path)) != expected:
            raise CheckpointError(f"{path} was exported beside another {text_from} (sha256 {expected[:12]}..., "
                                  f"this one {found[:12]}...): its UNet was trained on that file's text tower; "
                                  f"restore it or re-export the checkpoint")
        clip_state = _read_safetensors(clip_path, seen)
        try:
            text = clip_text_from_open_clip(clip_state)
        except ValueError as e:
            raise CheckpointError(f"{clip_path}: no open_clip text tower for {path} ({e})") from None
        state = {**{TEXT_PREFIXES["transformers"] + k: v for k, v in text.items()}, **state}
    if (base := metadata.get(OVERLAY_KEY)) is not None:
        state = {**_read_safetensors(_linked(path, base, "is an overlay on", seen), seen), **state}
    return state


def _read_file(path: Path) -> StateDict:
    if detect_format(path) == "safetensors":
        return _read_safetensors(path)
    return _tensor_dict(load_pickled(path), str(path))


def _weights_in(folder: Path) -> list[Path]:
    """The weight file(s) of one diffusers/transformers component folder: sharded index, safetensors, .bin."""
    for stem in _WEIGHT_STEMS:
        for suffix in (".safetensors", ".fp16.safetensors", ".bin", ".fp16.bin"):
            index = folder / f"{stem}{suffix}.index.json"
            if index.is_file():
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                return [folder / s for s in shards]
            if (folder / f"{stem}{suffix}").is_file():
                return [folder / f"{stem}{suffix}"]
    raise CheckpointError(f"{folder}: no weights file (looked for {', '.join(s + '.safetensors' for s in _WEIGHT_STEMS)}"
                          " and .bin)")


def _read_diffusers(folder: Path, config: LDMConfig, components: tuple[str, ...]) -> StateDict:
    """unet/, vae/, text_encoder/ (those of `components`) mapped to CompVis names; absent ones give no keys."""
    converters: dict[str, Callable[[StateDict], StateDict]] = {
        "unet": lambda sd: unet_from_diffusers(sd, config.unet),
        "vae": vae_from_diffusers,
        "text": open_clip_text_from_transformers if config.text.layout == "open_clip" else clip_text_from_transformers,
    }
    pre = prefixes(config)
    out: StateDict = {}
    for component, sub in DIFFUSERS_DIRS.items():
        if component not in components or not (folder / sub).is_dir():
            continue
        weights: StateDict = {}
        for file in _weights_in(folder / sub):
            weights.update(_read_file(file))
        try:
            mapped = converters[component](weights)
        except ValueError as e:
            raise CheckpointError(f"{folder / sub}: weights do not map onto the config's {component} ({e})") from None
        out.update({pre[component] + k: v for k, v in mapped.items()})
    return out


def read_state_dict(path: str | os.PathLike, config: LDMConfig | None = None,
                    components: tuple[str, ...] = tuple(DIFFUSERS_DIRS)) -> tuple[StateDict, str]:
    """(CompVis-layout state dict, format) of a .ckpt/.pt/.pth/.safetensors file or a diffusers folder.

    `config` and `components` matter only for diffusers folders: the UNet block numbering depends on the config
    (default "sd-v1"), and only the sub-folders of the listed components are read.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights file not found: {path.resolve()}")
    fmt = detect_format(path)
    if fmt == "diffusers":
        return _read_diffusers(path, config or get_preset("sd-v1"), components), fmt
    if fmt == "safetensors":
        return _read_safetensors(path), fmt
    return _tensor_dict(load_pickled(path), str(path)), fmt
