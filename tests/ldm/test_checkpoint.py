"""Checkpoint loading: formats, EMA selection, strict-key diagnostics, schedule check, missing file, CLI.

A CompVis-layout checkpoint of the "tiny-test" config is built from random weights (with the schedule buffers,
EMA counters and position_ids a real SD-v1 file carries) and written as zip .ckpt, legacy .ckpt and .safetensors;
every format must give back exactly the same weights. Known SD-v1 sizes (686 UNet tensors with 859,520,964
parameters, VAE 83,653,863, text encoder 123,060,480) check the `keys` listing. The `weights` test runs on a
real checkpoint named by MSBD_SD_CKPT.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from ldm.checkpoint import (
    COMPONENTS, PREFIXES, CheckpointError, check_keys, check_schedule, expected_keys, guess_family, load_models,
    read_state_dict, split_components,
)
from ldm.checkpoint.__main__ import main
from ldm.checkpoint.components import build_model
from ldm.config import TINY_TEST, get_preset
from ldm.sampling.schedule import alphas_cumprod, scaled_linear_betas

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = TINY_TEST


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    """Random tiny-test weights under the CompVis prefixes."""
    torch.manual_seed(0)
    out = {}
    for c in COMPONENTS:
        out.update({PREFIXES[c] + k: v for k, v in build_model(c, CONFIG).state_dict().items()})
    return out


def _compvis(weights: dict[str, torch.Tensor], dtype=torch.float32) -> dict[str, torch.Tensor]:
    """weights plus what else a CompVis SD-v1 state_dict holds."""
    betas = scaled_linear_betas()
    sd = {k: v.to(dtype) for k, v in weights.items()}
    sd.update({"betas": betas.to(dtype), "alphas_cumprod": alphas_cumprod(betas).to(dtype),
               "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(0, dtype=torch.int32),
               "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None]})
    return sd


def _write(sd: dict[str, torch.Tensor], path, fmt: str):
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save({"state_dict": sd, "epoch": 3, "global_step": 10}, path,
                   _use_new_zipfile_serialization=fmt == "ckpt-zip")
    return path


def _assert_loaded(models, expected: dict[str, torch.Tensor], components=COMPONENTS, dtype=torch.float32):
    for c in components:
        module = {"unet": models.unet, "vae": models.vae, "text": models.text_encoder}[c]
        assert not module.training
        assert all(not p.requires_grad and p.dtype == dtype for p in module.parameters())
        for k, v in module.state_dict().items():
            torch.testing.assert_close(v, expected[PREFIXES[c] + k].to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["ckpt-zip", "ckpt-legacy", "safetensors"])
def test_formats_round_trip_exactly(tmp_path, weights, fmt):
    path = _write(_compvis(weights), tmp_path / f"model.{'safetensors' if fmt == 'safetensors' else 'ckpt'}", fmt)
    models = load_models(path, CONFIG)
    assert models.format == fmt
    _assert_loaded(models, weights)


def test_format_is_read_from_content_not_suffix(tmp_path, weights):
    path = _write(_compvis(weights), tmp_path / "model.bin", "safetensors")
    assert read_state_dict(path)[1] == "safetensors"
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="unrecognised weights format"):
        read_state_dict(tmp_path / "junk.ckpt")


def test_fp16_file_loads_as_float32_or_as_asked(tmp_path, weights):
    path = _write(_compvis(weights, torch.float16), tmp_path / "half.safetensors", "safetensors")
    half = {k: v.half() for k, v in weights.items()}
    _assert_loaded(load_models(path, CONFIG), half)                        # schedule check passes in fp16 too
    _assert_loaded(load_models(path, CONFIG, components=("vae",), dtype=torch.float16), half, ("vae",), torch.float16)


def test_component_subset(tmp_path, weights):
    path = _write(_compvis(weights), tmp_path / "m.safetensors", "safetensors")
    models = load_models(path, "tiny-test", components=["vae", "text"])
    assert models.unet is None and models.vae is not None and models.text_encoder is not None
    with pytest.raises(ValueError, match="components"):
        load_models(path, CONFIG, components=("unet", "clip"))


def test_old_transformers_text_layout_is_accepted(weights):
    old = {k.replace("transformer.text_model.", "transformer."): v for k, v in weights.items()}
    parts = split_components(old, CONFIG)
    assert set(parts["text"]) == {k.removeprefix(PREFIXES["text"]) for k in weights if k.startswith(PREFIXES["text"])}


# --- EMA ---------------------------------------------------------------------------------------------------

def _ema_copies(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model_ema.* entries CompVis LitEma writes (dots removed), with values distinct from the live weights."""
    unet = PREFIXES["unet"]
    return {"model_ema." + ("diffusion_model." + k[len(unet):]).replace(".", ""): v + 1.0
            for k, v in weights.items() if k.startswith(unet)}


def test_full_ema_file_uses_live_weights_by_default_and_ema_on_request(tmp_path, weights):
    ema = _ema_copies(weights)
    assert "model_ema.diffusion_modelinput_blocks00weight" in ema
    path = _write({**_compvis(weights), **ema}, tmp_path / "full-ema.ckpt", "ckpt-zip")
    _assert_loaded(load_models(path, CONFIG), weights)
    expected = {**weights, **{k: v + 1.0 for k, v in weights.items() if k.startswith(PREFIXES["unet"])}}
    _assert_loaded(load_models(path, CONFIG, use_ema=True), expected)


def test_ema_only_file_asks_for_use_ema(tmp_path, weights):
    sd = {k: v for k, v in _compvis(weights).items() if not k.startswith(PREFIXES["unet"])}
    path = _write({**sd, **_ema_copies(weights)}, tmp_path / "ema-only.safetensors", "safetensors")
    with pytest.raises(CheckpointError, match="EMA-only file.*pass use_ema=True"):
        load_models(path, CONFIG)
    assert load_models(path, CONFIG, use_ema=True).unet is not None


def test_use_ema_without_ema_weights_is_an_error(tmp_path, weights):
    path = _write(_compvis(weights), tmp_path / "m.safetensors", "safetensors")
    with pytest.raises(CheckpointError, match="no model_ema"):
        load_models(path, CONFIG, use_ema=True)


# --- strict keys --------------------------------------------------------------------------------------------

def _load_error(tmp_path, sd) -> str:
    path = _write(sd, tmp_path / "bad.safetensors", "safetensors")
    with pytest.raises(CheckpointError) as info:
        load_models(path, CONFIG)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_and_unexpected_keys_are_listed(tmp_path, weights):
    sd = _compvis(weights)
    del sd["first_stage_model.decoder.conv_out.bias"]
    sd["model.diffusion_model.extra.weight"] = torch.zeros(1)
    sd["some_other_key"] = torch.zeros(1)
    message = _load_error(tmp_path, sd)
    assert "vae: 1 missing [first_stage_model.decoder.conv_out.bias]" in message
    assert "unet: 1 unexpected [model.diffusion_model.extra.weight]" in message
    assert "1 keys of no component [some_other_key]" in message


def test_sd2_file_is_recognised(tmp_path, weights):
    sd = {k: v for k, v in _compvis(weights).items() if not k.startswith("cond_stage_model.")}
    sd.update({f"cond_stage_model.model.transformer.resblocks.{i}.attn.in_proj_weight": torch.zeros(3, 1)
               for i in range(5)})
    message = _load_error(tmp_path, sd)
    assert "SD 2.x" in message
    assert "5 keys of no component [cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight, " in message
    assert "the file has no text weights" in message


def test_inpainting_unet_is_read_from_the_file_or_refused_when_another_kind_is_asked(tmp_path, weights):
    sd = _compvis(weights)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    sd[key] = torch.randn(sd[key].shape[0], 9, 3, 3)
    path = _write(sd, tmp_path / "inpaint.safetensors", "safetensors")
    models = load_models(path, CONFIG)                                  # detected from conv_in
    assert models.config.inpainting and models.unet.config.in_channels == 9
    torch.testing.assert_close(models.unet.input_blocks[0][0].weight, sd[key], rtol=0, atol=0)
    assert guess_family(sd) == "latent diffusion, not SD (context_dim 32, text width 32) inpainting"
    with pytest.raises(CheckpointError) as info:
        load_models(path, CONFIG, inpainting=False)
    message = str(info.value)
    assert "\n" not in message and "holds an inpainting UNet (9 input channels" in message
    assert "where a plain UNet was asked for (inpainting=False)" in message and "model.inpainting=null" in message
    plain = _write(_compvis(weights), tmp_path / "plain.safetensors", "safetensors")
    assert not load_models(plain, CONFIG).config.inpainting
    with pytest.raises(CheckpointError, match=r"holds a plain UNet \(4 input channels\) .* where an inpainting UNet "
                                              r"was asked for \(inpainting=True\): give an inpainting"):
        load_models(plain, CONFIG, inpainting=True)


def test_unet_of_another_input_width_is_explained(tmp_path, weights):
    sd = _compvis(weights)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    sd[key] = torch.zeros(sd[key].shape[0], 6, 3, 3)
    message = _load_error(tmp_path, sd)
    assert f"{key} [32, 6, 3, 3] vs [32, 4, 3, 3]" in message
    assert "a UNet with 6 input channels" in message


def test_text_encoder_width_mismatch_is_explained(tmp_path, weights):
    sd = _compvis(weights)
    key = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    sd[key] = torch.zeros(sd[key].shape[0], 48)
    assert "a text encoder of width 48 (config: 32)" in _load_error(tmp_path, sd)


# --- schedule -----------------------------------------------------------------------------------------------

def test_schedule_check(weights):
    ours = alphas_cumprod(scaled_linear_betas())
    assert check_schedule({}, CONFIG) is None
    assert check_schedule({"alphas_cumprod": ours.float()}, CONFIG) < 1e-7
    assert check_schedule({"alphas_cumprod": ours.half()}, CONFIG) < 1e-3
    linear = alphas_cumprod(torch.linspace(0.00085, 0.012, 1000, dtype=torch.float64))   # not sqrt-spaced
    with pytest.raises(CheckpointError, match=r"another noise schedule: stored alphas_cumprod\[\d+\]"):
        check_schedule({"alphas_cumprod": linear.float()}, CONFIG)
    with pytest.raises(CheckpointError, match="num_train_timesteps=1000"):
        check_schedule({"alphas_cumprod": ours[:500].float()}, CONFIG)
    slightly_off = ours.float() * (1 + 3e-6)                                  # fp32 file, off by more than rtol
    with pytest.raises(CheckpointError):
        check_schedule({"alphas_cumprod": slightly_off}, CONFIG)


def test_load_refuses_other_schedule(tmp_path, weights):
    sd = _compvis(weights)
    sd["alphas_cumprod"] = torch.linspace(0.999, 0.01, 1000)
    with pytest.raises(CheckpointError, match="another noise schedule"):
        load_models(_write(sd, tmp_path / "m.safetensors", "safetensors"), CONFIG)


# --- missing file -------------------------------------------------------------------------------------------

def test_missing_file_message(tmp_path):
    path = tmp_path / "models" / "sd-v1-4.ckpt"
    with pytest.raises(CheckpointError) as info:
        load_models(path, "sd-v1", config_key="model.ckpt")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"weights file not found: {path}")
    assert "config key 'model.ckpt'" in message and "huggingface.co/CompVis" in message
    with pytest.raises(CheckpointError, match="get it from my server"):
        load_models(path, CONFIG, hint="get it from my server")


# --- CLI ----------------------------------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ldm.checkpoint", *args], capture_output=True, text=True, cwd=REPO)


def test_cli_keys_sd_v1():
    out = _cli("keys", "sd-v1")
    assert out.returncode == 0, out.stderr
    keys = json.loads(out.stdout)
    assert keys["model.diffusion_model.input_blocks.0.0.weight"] == [320, 4, 3, 3]
    assert keys["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] == [49408, 768]
    sizes = {c: [math.prod(s) for k, s in keys.items() if k.startswith(p)] for c, p in PREFIXES.items()}
    assert {c: (len(v), sum(v)) for c, v in sizes.items()} == {
        "unet": (686, 859_520_964), "vae": (248, 83_653_863), "text": (196, 123_060_480)}


def test_cli_keys_matches_expected_keys(capsys):
    assert main(["keys", "tiny-test"]) == 0
    assert json.loads(capsys.readouterr().out) == expected_keys(CONFIG)


def test_cli_inspect(tmp_path, weights, capsys):
    path = _write({**_compvis(weights), **_ema_copies(weights)}, tmp_path / "m.ckpt", "ckpt-zip")
    assert main(["inspect", str(path), "--config", "tiny-test"]) == 0
    out = capsys.readouterr().out
    assert "format:    ckpt-zip" in out
    assert "family:    latent diffusion, not SD (context_dim 32, text width 32), with EMA copies (model_ema.*)" in out
    n_unet = sum(k.startswith(PREFIXES["unet"]) for k in weights)
    params = sum(v.numel() for k, v in weights.items() if k.startswith(PREFIXES["unet"]))
    assert f"unet       model.diffusion_model.          {n_unet:>6} {params:>13,}  float32" in out
    assert "stored alphas_cumprod matches config 'tiny-test'" in out
    assert "against config 'tiny-test': every key and shape matches" in out


def test_cli_inspect_reports_mismatch_against_sd_v1(tmp_path, weights, capsys):
    path = _write(_compvis(weights), tmp_path / "m.safetensors", "safetensors")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "against config 'sd-v1':" in out
    assert "unet: " in out and "with another shape (file vs config)" in out
    assert "likely a UNet with context_dim 32 (config: 768)" in out


def test_cli_errors_are_one_line(tmp_path, capsys):
    missing = _cli("inspect", str(tmp_path / "nope.ckpt"))
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "weights file not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    with pytest.raises(SystemExit) as info:
        main(["keys", "sd-v9"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.count("\n") == 1 and "known: " in err and "sd-v1" in err
    with pytest.raises(SystemExit) as info:
        main(["inspect"])
    assert info.value.code == 2 and capsys.readouterr().err.count("\n") == 1


# --- real weights -------------------------------------------------------------------------------------------

@pytest.mark.weights
def test_real_checkpoint_loads_strictly():
    path = os.environ.get("MSBD_SD_CKPT")
    if not path:
        pytest.skip("MSBD_SD_CKPT is not set")
    models = load_models(path, "sd-v1")
    counts = {name: sum(p.numel() for p in m.parameters())
              for name, m in [("unet", models.unet), ("vae", models.vae), ("text", models.text_encoder)]}
    assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text": 123_060_480}


# --- SD-v1 sized key sets (meta tensors: shapes without memory) --------------------------------------------

def _sd_v1_meta() -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in expected_keys(get_preset("sd-v1")).items()}


def test_inpainting_is_named_from_the_files_own_latent_width():
    """A UNet over an 8-channel VAE takes 17 channels when it inpaints (2C+1), and 8 when it is plain."""
    unet, post = "model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.post_quant_conv.weight"
    base = {post: torch.empty(8, 8, 1, 1, device="meta"), "model.diffusion_model.out.2.weight": torch.empty(1)}

    def label(in_ch: int) -> str:
        return guess_family({**base, unet: torch.empty(32, in_ch, 3, 3, device="meta")})
    assert label(17).endswith(" inpainting")
    assert not label(8).endswith("channels") and "inpainting" not in label(8)
    assert label(9).endswith("with 9 input channels")                  # SD's 9 is not inpainting at width 8
    assert label(4).endswith("with 4 input channels")


def test_family_and_causes_at_sd_v1_size():
    sd = _sd_v1_meta()
    assert guess_family(sd) == "SD 1.x"
    check_keys(sd, get_preset("sd-v1"))                                      # fits: no error
    inpaint = {**sd, "model.diffusion_model.input_blocks.0.0.weight": torch.empty(320, 9, 3, 3, device="meta")}
    assert guess_family(inpaint) == "SD 1.x inpainting"
    sd2 = {k: torch.empty(v.shape[0], 1024, device="meta") if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))
           else v for k, v in sd.items()}
    assert guess_family(sd2) == "SD 2.x"
    with pytest.raises(CheckpointError, match=r"to_k.weight \[320, 1024\] vs \[320, 768\].*likely an SD 2.x file"):
        check_keys(sd2, get_preset("sd-v1"))


def test_sd_v1_ema_names_are_unambiguous():
    """Removing the dots must not merge two SD-v1 UNet names (e.g. input_blocks.1.1 vs input_blocks.11)."""
    sd = _sd_v1_meta()
    ema = _ema_copies({k: v for k, v in sd.items() if k.startswith(PREFIXES["unet"])})
    assert len(ema) == 686
    unet = split_components({**sd, **ema}, get_preset("sd-v1"), use_ema=True)["unet"]
    assert len(unet) == 686
