"""SD 2.x: parity of each network in both weight layouts, real sizes on the meta device, and wrong-family files.

A tiny config of the SD 2.x family (64-channel heads shrunk to 8, Linear proj_in/proj_out, OpenCLIP-layout text tower
run to its penultimate block then ln_final, v-prediction) is filled from three references with perturbed random
weights: diffusers' UNet2DConditionModel and AutoencoderKL, and open_clip's CLIP text tower (`visual` deleted, as
SD 2.x's FrozenOpenCLIPEmbedder does). They are written (1) in Stability's layout (`model.diffusion_model.*`
from diffusers through `unet_from_diffusers`, `first_stage_model.*` through `vae_from_diffusers`,
`cond_stage_model.model.*` as open_clip stores it, last block and text_projection included) as .ckpt and
.safetensors, and (2) as a diffusers folder, whose text_encoder/ is a transformers CLIPTextModel with GELU and
one block fewer (diffusers' SD 2.x text encoder holds only the 23 blocks SD runs). `load_models` must reproduce the
references to a relative error of 1e-5. The reference text encoding is FrozenOpenCLIPEmbedder's
`encode_with_transformer` written with open_clip's own modules.
"""
import dataclasses
import math

import pytest
import torch
from _parity_helpers import diffusers_vae, perturb
from safetensors.torch import save_file

from ldm.checkpoint import (
    CheckpointError,
    expected_keys,
    guess_family,
    load_models,
    read_state_dict,
)
from ldm.checkpoint.components import expected_shapes
from ldm.checkpoint.diagnose import check_family, resolve_inpainting
from ldm.config import TINY_TEST, LDMConfig, get_preset
from ldm.convert.unet import diffusers_unet_kwargs, unet_from_diffusers
from ldm.convert.vae import vae_from_diffusers
from ldm.models.clip_text import CLIPTextConfig
from ldm.models.open_clip_text import BLOCK_LEAVES, ResidualAttentionBlock
from ldm.models.unet import UNetConfig

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

REL_TOL = 1e-5
TINY_SD2 = LDMConfig(
    unet=UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
                    num_heads=-1, num_head_channels=8, context_dim=32, norm_num_groups=8,
                    use_linear_in_transformer=True),
    vae=TINY_TEST.vae,
    text=CLIPTextConfig(hidden_size=32, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                        hidden_act="gelu", layout="open_clip", skip_last_layers=1, pad_token_id=0),
    prediction_type="v", image_size=32,
)
# Published parameter counts of the released SD 2.x networks (stabilityai/stable-diffusion-2(-base) unet/,
# vae/ and text_encoder/; the VAE is SD 1.x's) and SD 1.x's for comparison.
SD2_UNET_PARAMS, SD2_TEXT_PARAMS, SD_VAE_PARAMS = 865_910_724, 340_387_840, 83_653_863




def _open_clip_text():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    c = TINY_SD2.text
    model = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=1, width=16, patch_size=8, image_size=16, head_width=8),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=c.vocab_size, width=c.hidden_size,
                                      heads=c.num_attention_heads, layers=c.num_hidden_layers))
    del model.visual
    return perturb(model)


def _open_clip_penultimate(model, ids: torch.Tensor) -> torch.Tensor:
    """SD 2.x FrozenOpenCLIPEmbedder(layer="penultimate").encode_with_transformer on open_clip's modules."""
    x = model.token_embedding(ids) + model.positional_embedding
    blocks = model.transformer.resblocks
    for block in blocks[: len(blocks) - 1]:
        x = block(x, attn_mask=model.attn_mask)
    return model.ln_final(x)


def _transformers_text():
    c = TINY_SD2.text
    return perturb(transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=c.vocab_size, max_position_embeddings=c.max_position_embeddings, hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size, num_hidden_layers=c.layers_run,
        num_attention_heads=c.num_attention_heads, hidden_act="gelu", attn_implementation="eager",
        pad_token_id=1, bos_token_id=49406, eos_token_id=49407,
    )))


def _diffusers_vae():
    return diffusers_vae(TINY_SD2.vae)


@pytest.fixture(scope="module")
def refs():
    torch.manual_seed(0)
    return {"unet": perturb(diffusers.UNet2DConditionModel(**diffusers_unet_kwargs(TINY_SD2.unet))),
            "vae": _diffusers_vae(), "open_clip": _open_clip_text(), "transformers": _transformers_text()}


def _stability_state(refs) -> dict[str, torch.Tensor]:
    sd = {"model.diffusion_model." + k: v for k, v in unet_from_diffusers(refs["unet"].state_dict(), TINY_SD2.unet).items()}
    sd.update({"first_stage_model." + k: v for k, v in vae_from_diffusers(refs["vae"].state_dict()).items()})
    sd.update({"cond_stage_model.model." + k: v for k, v in refs["open_clip"].state_dict().items()})
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


def _inputs():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(2, 4, 16, 16, generator=gen)
    image = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    ids = torch.randint(0, 49406, (2, 77), generator=gen)
    ids[:, 0], ids[:, 9], ids[:, 10:] = 49406, 49407, 0            # SOT, text, EOT, then open_clip's 0 padding
    context = torch.randn(2, 77, TINY_SD2.unet.context_dim, generator=gen)
    return z, image, ids, context, torch.tensor([1, 981])


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_stability_layout_file_matches_diffusers_and_open_clip(refs, tmp_path, fmt):
    sd = _stability_state(refs)
    assert {"cond_stage_model.model.text_projection", "cond_stage_model.model.transformer.resblocks.2.ln_1.weight",
            "cond_stage_model.model.logit_scale"} <= set(sd)                 # stored, not used
    path = tmp_path / f"sd2.{fmt}"
    if fmt == "ckpt":
        torch.save({"state_dict": sd, "global_step": 1}, path)
    else:
        save_file(sd, str(path))
    models = load_models(path, TINY_SD2)
    assert not models.config.inpainting
    z, image, ids, context, t = _inputs()
    with torch.inference_mode():
        errors = {
            "unet": _rel_err(models.unet(z, t, context), refs["unet"](z, t, encoder_hidden_states=context).sample),
            "vae.encode": _rel_err(models.vae.encode(image), refs["vae"].encode(image).latent_dist.mean),
            "vae.decode": _rel_err(models.vae.decode(z), refs["vae"].decode(z).sample),
            "text": _rel_err(models.text_encoder(ids), _open_clip_penultimate(refs["open_clip"], ids)),
        }
    assert max(errors.values()) <= REL_TOL, errors
    # the penultimate layer is what is used: the full tower's output differs
    with torch.inference_mode():
        full = refs["open_clip"].ln_final(refs["open_clip"].transformer(
            refs["open_clip"].token_embedding(ids) + refs["open_clip"].positional_embedding,
            attn_mask=refs["open_clip"].attn_mask))
        assert _rel_err(models.text_encoder(ids), full) > 1e-2


def test_diffusers_folder_matches_references(refs, tmp_path):
    for sub, key in (("unet", "unet"), ("vae", "vae"), ("text_encoder", "transformers")):
        refs[key].save_pretrained(tmp_path / sub, safe_serialization=True)
    state_dict, fmt = read_state_dict(tmp_path, TINY_SD2)
    assert fmt == "diffusers"
    assert {k: list(v.shape) for k, v in state_dict.items()} == expected_keys(TINY_SD2)   # no block 2, no projection
    models = load_models(tmp_path, TINY_SD2)
    z, image, ids, context, t = _inputs()
    with torch.inference_mode():
        errors = {
            "unet": _rel_err(models.unet(z, t, context), refs["unet"](z, t, encoder_hidden_states=context).sample),
            "vae.decode": _rel_err(models.vae.decode(z), refs["vae"].decode(z).sample),
            "text": _rel_err(models.text_encoder(ids), refs["transformers"](ids).last_hidden_state),
        }
    assert max(errors.values()) <= REL_TOL, errors


def test_open_clip_block_leaves_are_the_modules_names():
    assert tuple(ResidualAttentionBlock(TINY_SD2.text).state_dict()) == BLOCK_LEAVES


# --- real sizes, on the meta device ---------------------------------------------------------------------------

def _count(config: LDMConfig, component: str) -> int:
    return sum(math.prod(s) for s in expected_shapes(config, component).values())


@pytest.mark.parametrize("name", ["sd-v2", "sd-v2-768"])
def test_sd2_parameter_counts_are_the_released_ones(name):
    config = get_preset(name)
    assert (_count(config, "unet"), _count(config, "vae"), _count(config, "text")) == \
        (SD2_UNET_PARAMS, SD_VAE_PARAMS, SD2_TEXT_PARAMS)


def test_inpainting_presets_add_only_the_conv_in_channels():
    for plain, inpaint in (("sd-v1", "sd-v1-inpainting"), ("sd-v2", "sd-v2-inpainting")):
        a, b = get_preset(plain), get_preset(inpaint)
        assert b.inpainting and not a.inpainting and b.unet.in_channels == 9
        assert _count(b, "unet") - _count(a, "unet") == 5 * 320 * 3 * 3      # 5 extra input channels of conv_in


def test_sd2_presets():
    base, v768 = get_preset("sd-v2"), get_preset("sd-v2-768")
    assert (base.prediction_type, base.image_size, v768.prediction_type, v768.image_size) == ("eps", 512, "v", 768)
    assert base.unet.attention_heads(640) == (10, 64) and base.unet.use_linear_in_transformer
    assert base.text.layers_run == 23 and base.text.pad_token_id == 0
    assert dataclasses.replace(v768, prediction_type="eps", image_size=512) == base
    keys = expected_keys(base)
    assert len([k for k in keys if k.startswith("cond_stage_model.model.")]) == 4 + 23 * 12   # token, position, ln_final x2
    assert keys["model.diffusion_model.input_blocks.1.1.proj_in.weight"] == [320, 320]      # Linear
    assert keys["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == [320, 1024]


# --- files of another family: one line naming what was found and what to pass ----------------------------------

def _meta(config: LDMConfig) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in expected_keys(config).items()}


def test_family_of_real_sized_key_sets():
    assert guess_family(_meta(get_preset("sd-v2"))) == "SD 2.x"
    assert guess_family(_meta(get_preset("sd-v2-inpainting"))) == "SD 2.x inpainting"
    assert guess_family(_meta(get_preset("sd-v1-inpainting"))) == "SD 1.x inpainting"
    sdxl = {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.empty(768, device="meta"),
            "model.diffusion_model.label_emb.0.0.weight": torch.empty(1280, 2816, device="meta")}
    assert guess_family(sdxl) == "SDXL"


@pytest.mark.parametrize("file_config, config, expected", [
    ("sd-v1", "sd-v2", "holds an SD 1.x model but config 'sd-v2' is SD 2.x: pass config 'sd-v1' (model=sd-v1)"),
    ("sd-v2", "sd-v1", "holds an SD 2.x model but config 'sd-v1' is SD 1.x: pass config 'sd-v2' (model=sd-v2; "
                       "512-base, eps) or 'sd-v2-768'"),
    ("sd-v2-inpainting", "sd-v1", "holds an SD 2.x inpainting model but config 'sd-v1' is SD 1.x: pass config "
                                  "'sd-v2'"),
])
def test_other_sd_family_is_one_line(file_config, config, expected):
    with pytest.raises(CheckpointError) as info:
        check_family(_meta(get_preset(file_config)), get_preset(config), "x.ckpt", f"config '{config}'")
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_inpainting_is_read_from_conv_in_at_real_size():
    plain, inpaint = _meta(get_preset("sd-v2")), _meta(get_preset("sd-v2-inpainting"))
    assert resolve_inpainting(inpaint, get_preset("sd-v2"), None) == get_preset("sd-v2-inpainting")
    assert resolve_inpainting(plain, get_preset("sd-v2-inpainting"), None) == get_preset("sd-v2")
    with pytest.raises(CheckpointError, match=r"holds an inpainting UNet \(9 input channels: latent, mask, "
                                              r"masked-image latent\) \(SD 2.x\) where a plain UNet was asked for"):
        resolve_inpainting(inpaint, get_preset("sd-v2"), False)
    with pytest.raises(CheckpointError, match=r"holds a plain UNet \(4 input channels\) \(SD 2.x\) where an "
                                              r"inpainting UNet was asked for \(inpainting=True\)"):
        resolve_inpainting(plain, get_preset("sd-v2"), True)


@pytest.mark.parametrize("keys, message", [
    # an SD 1.x file (cross-attention context 768) given to model=sd-v2
    ({"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)},
     "holds an SD 1.x model but config 'sd-v2' is SD 2.x: pass config 'sd-v1' (model=sd-v1)"),
    # SDXL: GeneralConditioner embedders and the ADM label embedding
    ({"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (768,),
      "model.diffusion_model.label_emb.0.0.weight": (1280, 16)},
     "holds an SDXL model but config 'sd-v2' is SD 2.x: pass an SD 1.x or 2.x checkpoint: SDXL is not supported"),
])
def test_wrong_family_file_is_one_line_through_load_models(tmp_path, keys, message):
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(s) for k, s in keys.items()}, str(path))
    with pytest.raises(CheckpointError) as info:
        load_models(path, "sd-v2")
    assert message in str(info.value) and "\n" not in str(info.value) and str(path) in str(info.value)


def test_diffusers_scheduler_names_the_parameterisation(refs, tmp_path):
    """512-base and 768-v weights have the same shapes; a folder's scheduler config tells them apart."""
    import json
    refs["unet"].save_pretrained(tmp_path / "unet", safe_serialization=True)
    (tmp_path / "scheduler").mkdir()
    for stored, ok in (("v_prediction", True), ("epsilon", False)):
        (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": stored}))
        if ok:
            assert load_models(tmp_path, TINY_SD2, components=("unet",)).unet is not None
        else:
            with pytest.raises(CheckpointError, match=r"is a epsilon model \(scheduler/scheduler_config.json\) but "
                                                      r"the given config predicts v: pass config 'sd-v2' \(model=sd-v2\)"):
                load_models(tmp_path, TINY_SD2, components=("unet",))


def test_cli_inspect_names_the_family_and_what_to_pass(refs, tmp_path, capsys):
    from ldm.checkpoint.__main__ import main
    from ldm.config import PRESETS
    path = tmp_path / "sd2.safetensors"
    save_file(_stability_state(refs), str(path))
    PRESETS["test-tiny-sd2"] = TINY_SD2
    try:
        assert main(["inspect", str(path), "--config", "test-tiny-sd2"]) == 0
    finally:
        PRESETS.pop("test-tiny-sd2")
    out = capsys.readouterr().out
    assert "family:    SD 2.x\n" in out and "pass:      config 'sd-v2' (model=sd-v2; 512-base, eps)" in out
    assert "text       cond_stage_model.model." in out
    assert "against config 'test-tiny-sd2': every key and shape matches" in out
    assert main(["inspect", str(path), "--config", "tiny-test"]) == 0        # an SD 1.x-layout config: mismatch
    out = capsys.readouterr().out
    assert "likely an SD 2.x file given to a non-SD config (pass config 'sd-v2'" in out


# --- full size (slow: ~1.7 G parameters in fp32 on the CPU) ----------------------------------------------------

@pytest.mark.slow
def test_full_size_sd2_unet_matches_diffusers(tmp_path):
    from test_unet import _compare
    assert _compare(get_preset("sd-v2").unet, tmp_path, x_shape=(1, 4, 32, 32), context_len=77) <= REL_TOL


@pytest.mark.slow
def test_full_size_sd2_text_encoder_matches_transformers(tmp_path):
    c = get_preset("sd-v2").text
    torch.manual_seed(0)
    ref = perturb(transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=c.vocab_size, max_position_embeddings=c.max_position_embeddings, hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size, num_hidden_layers=c.layers_run, num_attention_heads=c.num_attention_heads,
        hidden_act="gelu", attn_implementation="eager")))
    ref.save_pretrained(tmp_path / "text_encoder", safe_serialization=True)
    ours = load_models(tmp_path, "sd-v2", components=("text",)).text_encoder
    ids = torch.randint(0, 49406, (1, 77))
    with torch.inference_mode():
        assert _rel_err(ours(ids), ref(ids).last_hidden_state) <= REL_TOL


def test_sd2_token_ids_are_open_clips():
    """SD 2.x tokenises with open_clip.tokenize: BOS, tokens, EOS, then 0 (not EOS as SD 1.x)."""
    from ldm.models.tokenizer import CLIPTokenizer
    prompts = ["a red star", "A photo of  Two CATS, on a sofa!", "x " * 100]
    with pytest.warns(UserWarning, match="truncated"):                      # the third prompt
        ours = CLIPTokenizer(pad_token_id=get_preset("sd-v2").text.pad_token_id)(prompts)
    assert torch.equal(ours, open_clip.tokenize(prompts))
