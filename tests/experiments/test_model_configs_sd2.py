"""model=sd-v2 / model=sd-v2-768 compose, scale the paper's pixel sizes to the native size, and a checkpoint of another
family (an SD 1.x file, an SDXL file, an inpainting file where a plain one is demanded) is one line naming what
was found and what to pass, through the same code path the command line takes (`experiments.common.load_bundle`)."""
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from _experiment_helpers import compose_experiment
from experiments.common import ModelSpec, ldm_config_of, load_bundle
from ldm.config import get_preset
from msbd.config import MSBDConfig

PAPER_512 = {"first": 512, "max_edgelen": 768, "tile": 768, "overlap": 128, "decoder_tile": 512}


@pytest.mark.parametrize("model", ["sd-v2", "sd-v2-768"])
def test_model_config_sizes_are_the_papers_scaled_to_the_native_size(tmp_path, model):
    cfg = compose_experiment(tmp_path, "edit", f"model={model}", "image=x.png", "mask=m.png", "prompt=p")
    obj = OmegaConf.to_object(cfg.model)
    assert obj.ldm_config == model and obj.inpainting is None
    config = ldm_config_of(obj)
    scale = config.image_size / 512
    m = cfg.msbd
    got = {"first": m.first_stage.size, "max_edgelen": m.upscale.max_edgelen, "tile": m.grid.tile,
           "overlap": m.grid.overlap, "decoder_tile": m.decoder_opt.tile}
    assert got == {k: int(v * scale) for k, v in PAPER_512.items()}
    assert all(v % config.size_multiple == 0 for v in got.values())
    assert config.prediction_type == ("v" if model == "sd-v2-768" else "eps")


def _file(tmp_path, tensors: dict[str, tuple[int, ...]]) -> str:
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(s) for k, s in tensors.items()}, str(path))
    return str(path)


@pytest.mark.parametrize("tensors, model, inpainting, expected", [
    ({"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)}, "sd-v2", None,
     "holds an SD 1.x model but config 'sd-v2' is SD 2.x: pass config 'sd-v1' (model=sd-v1)"),
    ({"conditioner.embedders.1.model.ln_final.weight": (1280,)}, "sd-v2-768", None,
     "holds an SDXL model but config 'sd-v2-768' is SD 2.x: pass an SD 1.x or 2.x checkpoint"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3),
      "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)}, "sd-v2", False,
     "holds an inpainting UNet (9 input channels: latent, mask, masked-image latent) (SD 2.x) where a plain UNet was "
     "asked for (inpainting=False)"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, "sd-v1", True,
     "holds a plain UNet (4 input channels) (SD 1.x) where an inpainting UNet was asked for (inpainting=True)"),
])
def test_checkpoint_of_another_family_is_one_line(tmp_path, tensors, model, inpainting, expected):
    if model == "sd-v1" and "attn2" not in str(tensors):
        tensors = {**tensors, "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)}
    spec = ModelSpec(name=model, ldm_config=model, ckpt=_file(tmp_path, tensors), inpainting=inpainting)
    msbd = MSBDConfig.for_native_size(get_preset(model).image_size)
    msbd.first_stage.rerank, msbd.upscale.mode = False, "bicubic"
    with pytest.raises(ValueError) as info:
        load_bundle(spec, msbd)
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_toy_inpaint_model_config_is_the_toy_one_with_the_overlay(tmp_path):
    toy = compose_experiment(tmp_path, "demo", "model=toy")
    cfg = compose_experiment(tmp_path, "demo", "model=toy-inpaint")
    assert cfg.model.ckpt.endswith("toy-inpaint-unet.safetensors") and cfg.model.inpainting is True
    assert cfg.msbd == toy.msbd and cfg.model.ldm_config == toy.model.ldm_config == "toy"
