"""A safetensors overlay (metadata `msbd_overlay_base`) loads as its base with the overlay's tensors on top."""
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
