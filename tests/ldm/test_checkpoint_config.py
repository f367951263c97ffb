"""LDMConfig: presets, JSON round trip, validation of values and of how the three networks fit together."""
import dataclasses
import json

import pytest

from ldm.config import PRESETS, SD_V1, LDMConfig, get_preset, register_preset
from ldm.models.autoencoder import SD_LATENT_SCALE
from ldm.models.unet import UNetConfig


def test_sd_v1_preset_matches_the_reference_config():
    c = get_preset("sd-v1")
    assert (c.beta_start, c.beta_end, c.num_train_timesteps) == (0.00085, 0.012, 1000)
    assert c.scale_factor == SD_LATENT_SCALE == 0.18215
    assert c.prediction_type == "eps" and c.image_size == 512 and c.latent_size == 64
    assert c.unet.context_dim == c.text.hidden_size == 768


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name):
    config = get_preset(name)
    text = json.dumps(config.to_dict())
    assert LDMConfig.from_dict(json.loads(text)) == config


def test_from_dict_fills_defaults_and_rejects_unknown_keys():
    assert LDMConfig.from_dict({}) == SD_V1
    assert LDMConfig.from_dict({"unet": {"num_heads": 8}}).unet == UNetConfig()
    with pytest.raises(ValueError, match=r"LDMConfig: unknown keys \['scale'\]"):
        LDMConfig.from_dict({"scale": 0.2})
    with pytest.raises(ValueError, match=r"LDMConfig.unet: unknown keys \['heads'\]"):
        LDMConfig.from_dict({"unet": {"heads": 8}})


def test_unknown_preset_lists_known_names():
    with pytest.raises(ValueError, match="unknown model config 'sd-v3'; known: sd-v1, sd-v1-inpainting, sd-v2, "
                                         "sd-v2-768, sd-v2-inpainting, tiny-test"):
        get_preset("sd-v3")


def test_register_preset():
    custom = dataclasses.replace(SD_V1, image_size=768)
    register_preset("test-custom", custom)
    try:
        assert get_preset("test-custom") is custom
        with pytest.raises(ValueError, match="already exists"):
            register_preset("test-custom", SD_V1)
    finally:
        PRESETS.pop("test-custom")


@pytest.mark.parametrize("change, message", [
    ({"unet": UNetConfig(context_dim=1024)}, "context_dim 1024 must equal the text encoder hidden_size 768"),
    ({"unet": UNetConfig(in_channels=5)}, r"must be the VAE latent channels \(embed_dim=4\), or in = 9"),
    ({"image_size": 500}, "multiple of the VAE factor 8"),
    ({"beta_end": 0.0001}, "beta_start < beta_end"),
    ({"prediction_type": "x0"}, "prediction_type must be one of"),
    ({"scale_factor": 0.0}, "scale_factor must be positive"),
])
def test_invalid_configs(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SD_V1, **change)
