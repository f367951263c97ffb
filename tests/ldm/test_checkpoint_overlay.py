"""A safetensors overlay (metadata `msbd_overlay_base`) loads as its base with the overlay's tensors on top."""
import os

import pytest
import torch
from safetensors.torch import save_file

from ldm.checkpoint import COMPONENTS, PREFIXES, CheckpointError, load_models
from ldm.checkpoint.components import build_model
from ldm.config import TINY_TEST

KEY = "model.diffusion_model.input_blocks.0.0.weight"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.manual_seed(0)
    sd = {PREFIXES[c] + k: v.contiguous() for c in COMPONENTS for k, v in build_model(c, TINY_TEST).state_dict().items()}
    folder = tmp_path_factory.mktemp("overlay")
    save_file(sd, str(folder / "base.safetensors"))
    return folder, sd


def test_overlay_replaces_and_widens_tensors(base):
    folder, sd = base
    out_key = "model.diffusion_model.out.2.bias"
    overlay = {KEY: torch.randn(sd[KEY].shape[0], 9, 3, 3).half(), out_key: torch.full_like(sd[out_key], 0.5)}
    save_file(overlay, str(folder / "inpaint.safetensors"), metadata={"msbd_overlay_base": "base.safetensors"})
    models = load_models(folder / "inpaint.safetensors", TINY_TEST)
    assert models.config.inpainting                                           # read from the overlay's conv_in
    torch.testing.assert_close(models.unet.input_blocks[0][0].weight, overlay[KEY].float(), rtol=0, atol=0)
    torch.testing.assert_close(models.unet.out[2].bias, overlay[out_key], rtol=0, atol=0)
    torch.testing.assert_close(models.unet.middle_block[0].in_layers[2].weight,
                               sd["model.diffusion_model.middle_block.0.in_layers.2.weight"], rtol=0, atol=0)


@pytest.mark.parametrize("base_name, message", [("missing.safetensors", "not found"),
                                                ("../base.safetensors", "another file in the same folder"),
                                                ("self.safetensors", "part of a loop")])
def test_bad_overlay_base_is_one_line(base, base_name, message):
    folder, sd = base
    save_file({KEY: sd[KEY]}, str(folder / "self.safetensors"), metadata={"msbd_overlay_base": base_name})
    with pytest.raises(CheckpointError, match=message) as info:
        load_models(folder / "self.safetensors", TINY_TEST)
    assert "\n" not in str(info.value)


# --- `msbd_text_from`: the text encoder read from an open_clip CLIP file beside the checkpoint ------------------

def _clip_file(folder, sd, name="clip.safetensors", extra=None):
    """An open_clip-layout CLIP holding the base's text encoder, plus CLIP-only tensors the link must skip."""
    from ldm.convert.clip_text import open_clip_text_from_transformers
    text = {k.removeprefix(PREFIXES["text"]): v for k, v in sd.items() if k.startswith(PREFIXES["text"])}
    clip = {**open_clip_text_from_transformers(text), "visual.conv1.weight": torch.randn(4, 3, 2, 2),
            "text_projection": torch.randn(4, 4), "logit_scale": torch.ones(()), **(extra or {})}
    save_file({k: v.contiguous() for k, v in clip.items()}, str(folder / name))


def test_text_encoder_read_from_a_linked_clip(base):
    folder, sd = base
    _clip_file(folder, sd)
    own = {k: v for k, v in sd.items() if not k.startswith(PREFIXES["text"])}
    save_file(own, str(folder / "linked.safetensors"), metadata={"msbd_text_from": "clip.safetensors"})
    models = load_models(folder / "linked.safetensors", TINY_TEST)           # strict: every text key present
    for k, v in models.text_encoder.state_dict().items():
        torch.testing.assert_close(v, sd[PREFIXES["text"] + k], rtol=0, atol=0)
    # an overlay on the linked file keeps the link (the toy inpainting UNet on toy-ldm)
    save_file({KEY: sd[KEY] + 1}, str(folder / "on_linked.safetensors"),
              metadata={"msbd_overlay_base": "linked.safetensors"})
    over = load_models(folder / "on_linked.safetensors", TINY_TEST)
    torch.testing.assert_close(over.unet.input_blocks[0][0].weight, sd[KEY] + 1, rtol=0, atol=0)
    torch.testing.assert_close(over.text_encoder.text_model.final_layer_norm.bias,
                               sd[PREFIXES["text"] + "text_model.final_layer_norm.bias"], rtol=0, atol=0)


@pytest.mark.parametrize("target, message", [("gone.safetensors", "not found"),
                                             ("sub/clip.safetensors", "not a path"),         # it exists there
                                             ("selflink.safetensors", "part of a loop"),
                                             ("notclip.safetensors", "no open_clip text tower"),
                                             ("clip.safetensors", "exported beside another clip.safetensors")])
def test_bad_text_link_is_one_line(base, target, message):
    folder, sd = base
    save_file({"first_stage_model.x": torch.zeros(1)}, str(folder / "notclip.safetensors"))
    (folder / "sub").mkdir(exist_ok=True)
    _clip_file(folder / "sub", sd)
    _clip_file(folder, sd)
    wrong_hash = {"msbd_text_from_sha256": "0" * 64} if target == "clip.safetensors" else {}  # a hash no file has
    save_file({KEY: sd[KEY]}, str(folder / "selflink.safetensors"), metadata={"msbd_text_from": target, **wrong_hash})
    with pytest.raises(CheckpointError, match=message) as info:
        load_models(folder / "selflink.safetensors", TINY_TEST)
    assert "\n" not in str(info.value)


def test_clip_text_from_open_clip_inverts_the_sd2_mapping(base):
    from ldm.convert.clip_text import clip_text_from_open_clip, open_clip_text_from_transformers
    _, sd = base
    text = {k.removeprefix(PREFIXES["text"]): v for k, v in sd.items() if k.startswith(PREFIXES["text"])}
    open_clip = open_clip_text_from_transformers(text)
    back = clip_text_from_open_clip({**open_clip, "visual.proj": torch.zeros(2), "logit_scale": torch.ones(())})
    assert set(back) == {k for k in text if not k.endswith("position_ids")}
    for k, v in back.items():
        torch.testing.assert_close(v, text[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="unexpected key"):
        clip_text_from_open_clip({**open_clip, "transformer.resblocks.0.mystery.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="not 3 x width"):
        clip_text_from_open_clip({**open_clip, "transformer.resblocks.0.attn.in_proj_bias": torch.zeros(4)})


def test_the_linked_clip_file_is_hashed_and_reported(base):
    """The link carries the CLIP file's hash: the file it was exported beside loads, and linked_files names every
    file an overlay and its base read, for the outputs' provenance."""
    from ldm.checkpoint.formats import linked_files, sha256_file
    folder, sd = base
    _clip_file(folder, sd, "clip2.safetensors")
    own = {k: v for k, v in sd.items() if not k.startswith(PREFIXES["text"])}
    save_file(own, str(folder / "hashed.safetensors"),
              metadata={"msbd_text_from": "clip2.safetensors", "msbd_text_from_sha256": sha256_file(folder / "clip2.safetensors")})
    load_models(folder / "hashed.safetensors", TINY_TEST)
    save_file({KEY: sd[KEY]}, str(folder / "over_hashed.safetensors"), metadata={"msbd_overlay_base": "hashed.safetensors"})
    assert linked_files(folder / "over_hashed.safetensors") == {
        "overlay_base": folder / "hashed.safetensors", "overlay_base.text_from": folder / "clip2.safetensors"}
    assert linked_files(folder / "base.safetensors") == {}


def test_sha256_file_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    """sha256_file reads a file once per process (load check, then provenance) and again once it changes, even in
    place with the same size; a file changed within the last RACY_SECONDS is not remembered (its timestamp might not
    show a rewrite)."""
    import hashlib
    import time

    from ldm.checkpoint import formats
    reads = []
    monkeypatch.setattr(formats, "_hash_bytes", lambda p, real=formats._hash_bytes: reads.append(p) or real(p))
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 4096)
    assert formats.sha256_file(path) == formats.sha256_file(path) == hashlib.sha256(b"a" * 4096).hexdigest()
    assert len(reads) == 2                                                       # just written: racy, not remembered
    old = time.time_ns() - 60 * 10**9
    os.utime(path, ns=(old, old))                                                # ctime stays recent: still racy
    formats.sha256_file(path)
    assert len(reads) == 3
    monkeypatch.setattr(formats, "RACY_SECONDS", -1e9)                           # as if the change were long ago
    first = formats.sha256_file(path)
    assert formats.sha256_file(path) == first and len(reads) == 4                # remembered
    with open(path, "r+b") as f:
        f.write(b"b")                                                            # same size, same inode
    assert formats.sha256_file(path) == hashlib.sha256(b"b" + b"a" * 4095).hexdigest() and len(reads) == 5
