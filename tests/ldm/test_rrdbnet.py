"""RRDBNet parity with spandrel's ESRGAN, which loads our state dict as it would load RealESRGAN_x4plus.pth."""
import pytest
import spandrel
import torch
from safetensors.torch import load_file, save_file

from ldm.models.rrdbnet import RRDBNet, RRDBNetConfig, rrdbnet_config_from_state_dict

# spandrel does not infer the growth width from the weights: it assumes 32, so small models keep 32.
TINY = RRDBNetConfig(num_feat=16, num_block=2, num_grow_ch=32)


def _tiny_model() -> RRDBNet:
    torch.manual_seed(0)
    return RRDBNet(TINY).eval()


def test_spandrel_recognises_our_layout_and_agrees(tmp_path):
    ours = _tiny_model()
    path = tmp_path / "rrdb.safetensors"
    save_file(ours.state_dict(), str(path))
    descriptor = spandrel.ModelLoader().load_from_file(str(path))
    assert descriptor.architecture.id == "ESRGAN"
    assert descriptor.scale == 4
    x = torch.rand(2, 3, 12, 10)
    with torch.inference_mode():
        ref = descriptor.model.eval()(x)
        out = ours(x)
    assert out.shape == (2, 3, 48, 40)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_config_is_inferred_from_weights(tmp_path):
    state = _tiny_model().state_dict()
    assert rrdbnet_config_from_state_dict(state) == TINY
    with pytest.raises(ValueError, match="conv_first"):
        rrdbnet_config_from_state_dict({k: v for k, v in state.items() if k != "conv_first.weight"})
    with pytest.raises(ValueError, match="params_ema"):
        rrdbnet_config_from_state_dict({"params_ema": state})


def test_realesrgan_x4plus_size():
    with torch.device("meta"):
        model = RRDBNet(RRDBNetConfig())
    # RealESRGAN_x4plus.pth holds 16,697,987 parameters.
    assert sum(p.numel() for p in model.parameters()) == 16_697_987


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError, match="scale 4"):
        RRDBNetConfig(scale=2)
    with pytest.raises(ValueError, match="num_block"):
        RRDBNetConfig(num_block=0)
