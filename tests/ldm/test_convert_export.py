"""ldm.convert.export: our modules moved into diffusers / transformers classes by the key mappings run in reverse
give our outputs (max error relative to our largest value <= 1e-5, fp32), for the tiny test layout and the toy's."""
import json

import pytest
import torch

from ldm.config import TINY_TEST, LDMConfig
from ldm.convert.export import (
    export_text_encoder,
    export_unet,
    export_vae,
    reverse_state_dict,
)
from ldm.convert.unet import diffusers_unet_kwargs, unet_from_diffusers
from ldm.models.autoencoder import AutoencoderKL
from ldm.models.clip_text import CLIPTextEncoder
from ldm.models.unet import UNetModel

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
REL_TOL = 1e-5


def _toy_config() -> LDMConfig:
    from msbd.toy.presets import LDM_CONFIG
    with open(LDM_CONFIG) as f:
        return LDMConfig.from_dict(json.load(f))


@torch.no_grad()
def _ours(config: LDMConfig):
    torch.manual_seed(0)
    models = UNetModel(config.unet), AutoencoderKL(config.vae), CLIPTextEncoder(config.text)
    for m in models:                                    # norms (init 1) and biases (init 0) made non-trivial
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return [m.eval() for m in models]


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("name", ["tiny", "toy"])
def test_exported_models_give_our_outputs(name):
    config = TINY_TEST if name == "tiny" else _toy_config()
    unet, vae, text = _ours(config)
    d_unet, d_vae, d_text = export_unet(unet), export_vae(vae, config.scale_factor), export_text_encoder(text)
    assert d_unet.config.in_channels == 4 and d_vae.config.scaling_factor == config.scale_factor
    gen = torch.Generator().manual_seed(1)
    side = 2 ** (len(config.unet.channel_mult) - 1) * 4
    z = torch.randn(2, 4, side, side, generator=gen)
    image = torch.rand(2, 3, side * 8, side * 8, generator=gen) * 2 - 1
    ids = torch.randint(0, config.text.vocab_size, (2, 77), generator=gen)
    context = torch.randn(2, 77, config.unet.context_dim, generator=gen)
    t = torch.tensor([3, 981])
    with torch.inference_mode():
        errors = {
            "unet": _rel(d_unet(z, t, encoder_hidden_states=context).sample, unet(z, t, context)),
            "vae.encode": _rel(d_vae.encode(image).latent_dist.mean, vae.encode(image)),
            "vae.decode": _rel(d_vae.decode(z).sample, vae.decode(z)),
            "text": _rel(d_text(ids).last_hidden_state, text(ids)),
        }
    assert max(errors.values()) <= REL_TOL, errors


def test_reverse_mapping_refuses_a_model_of_another_layout():
    unet, _, _ = _ours(TINY_TEST)
    kwargs = diffusers_unet_kwargs(TINY_TEST.unet)
    other = diffusers.UNet2DConditionModel(**{**kwargs, "layers_per_block": TINY_TEST.unet.num_res_blocks + 1})
    with pytest.raises(ValueError):                  # the forward mapping or the key check says which key
        reverse_state_dict(unet.state_dict(), other, lambda sd: unet_from_diffusers(sd, TINY_TEST.unet))
