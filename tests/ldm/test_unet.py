"""UNetModel parity with diffusers' UNet2DConditionModel on the same random weights, copied through our mapping.

The diffusers model is configured as SD v1 is (cross-attention on the levels listed in attention_resolutions,
none at the deepest, flip_sin_to_cos=True, freq_shift=0, norm_eps 1e-5), its weights are perturbed so that
no parameter is left at a constant initial value (GroupNorm/LayerNorm affine, biases), its state dict goes
through `unet_from_diffusers` and a safetensors file, and our model loads it with strict=True.
"""
import pytest
import torch
from safetensors.torch import load_file, save_file

from ldm.convert.unet import unet_from_diffusers
from ldm.models.unet import UNetConfig, UNetModel, timestep_embedding

diffusers = pytest.importorskip("diffusers")

SD_V1_PARAMS = 859_520_964   # parameter count of the SD-v1 UNet (model.diffusion_model.* of sd-v1-4.ckpt)
REL_TOL = 1e-5               # max |ours - ref| / max |ref| in fp32

TINY = UNetConfig(model_channels=32, channel_mult=(1, 2, 2), attention_resolutions=(1, 2), num_heads=4,
                  context_dim=32, norm_num_groups=8)


def _diffusers_unet(config: UNetConfig, seed: int = 0) -> torch.nn.Module:
    """A diffusers UNet2DConditionModel with the same architecture as `config`, randomly initialised."""
    levels = range(len(config.channel_mult))
    attn = [2**level in config.attention_resolutions for level in levels]
    widths = [m * config.model_channels for m in config.channel_mult]
    if config.num_head_channels == -1:
        heads = config.num_heads
    else:   # diffusers' `attention_head_dim` is (for this class, by a naming accident) the number of heads
        heads = tuple(w // config.num_head_channels for w in widths)
    torch.manual_seed(seed)
    model = diffusers.UNet2DConditionModel(
        in_channels=config.in_channels, out_channels=config.out_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=tuple(widths), layers_per_block=config.num_res_blocks,
        cross_attention_dim=config.context_dim, attention_head_dim=heads,
        transformer_layers_per_block=config.transformer_depth,
        use_linear_projection=config.use_linear_in_transformer, norm_num_groups=config.norm_num_groups,
        norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, act_fn="silu", downsample_padding=1,
    )
    _perturb_constant_params(model)
    return model.eval()


@torch.no_grad()
def _perturb_constant_params(model: torch.nn.Module) -> None:
    """Add noise to every parameter; constant ones (norm weights 1, biases 0) get unit-scale noise."""
    for p in model.parameters():
        scale = p.std() if p.numel() > 1 and p.std() > 0 else torch.tensor(1.0)
        p.add_(0.1 * scale * torch.randn_like(p))


def _ours_from(ref: torch.nn.Module, config: UNetConfig, tmp_path) -> UNetModel:
    """Our model with ref's weights, through unet_from_diffusers and a safetensors round trip."""
    path = tmp_path / "unet.safetensors"
    save_file({k: v.contiguous() for k, v in unet_from_diffusers(ref.state_dict(), config).items()}, str(path))
    ours = UNetModel(config).eval()
    ours.load_state_dict(load_file(str(path)), strict=True)
    return ours


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def _compare(config: UNetConfig, tmp_path, x_shape=(2, 4, 16, 16), context_len: int = 7) -> float:
    ref = _diffusers_unet(config)
    ours = _ours_from(ref, config, tmp_path)
    torch.manual_seed(1)
    x = torch.randn(x_shape)
    context = torch.randn(x_shape[0], context_len, config.context_dim)
    t = torch.tensor([3, 981][: x_shape[0]])
    with torch.inference_mode():
        expected = ref(x, t, encoder_hidden_states=context).sample
        out = ours(x, t, context)
    assert out.shape == expected.shape == x_shape[:1] + (config.out_channels,) + x_shape[2:]
    assert expected.abs().max() > 0.1   # the comparison is not between two near-zero tensors
    return _rel_err(out, expected)


@pytest.mark.parametrize("config", [
    TINY,
    # general layout: 1 ResBlock per level, attention on the middle level only, 4 levels, depth 2
    UNetConfig(model_channels=16, channel_mult=(1, 2, 3, 2), num_res_blocks=1, attention_resolutions=(2,),
               num_heads=2, transformer_depth=2, context_dim=24, norm_num_groups=8),
    # head width instead of head count, SD-2 style linear projections
    UNetConfig(model_channels=32, channel_mult=(1, 2, 2), attention_resolutions=(1, 2), num_heads=-1,
               num_head_channels=16, context_dim=32, norm_num_groups=8, use_linear_in_transformer=True),
], ids=["tiny_sd_v1", "general_layout", "head_channels_linear"])
def test_matches_diffusers_fp32(config, tmp_path):
    assert _compare(config, tmp_path) <= REL_TOL


def test_num_head_channels_conv_proj(tmp_path):
    config = UNetConfig(model_channels=32, channel_mult=(1, 2, 2), attention_resolutions=(1, 2), num_heads=-1,
                        num_head_channels=8, context_dim=32, norm_num_groups=8)
    assert UNetModel(config).input_blocks[4][1].transformer_blocks[0].attn1.heads == 8   # 64 channels / 8
    assert _compare(config, tmp_path) <= REL_TOL


def test_timestep_forms_agree():
    model = UNetModel(TINY).eval()
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 32)
    with torch.inference_mode():
        batch = model(x, torch.tensor([41, 41]), context)
        torch.testing.assert_close(model(x, 41, context), batch, rtol=0, atol=0)
        torch.testing.assert_close(model(x, torch.tensor(41), context), batch, rtol=0, atol=0)
        assert not torch.equal(model(x, 42, context), batch)
    with pytest.raises(ValueError, match="t must be"):
        model(x, torch.tensor([1, 2, 3]), context)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(2, 4, 6, 8), 1, context)


def test_timestep_embedding_is_cos_then_sin():
    t = torch.tensor([0, 7])
    emb = timestep_embedding(t, 6)                          # half = 3, freqs = 1e4^(-k/3)
    freqs = torch.tensor([1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3)])
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(7 * freqs), torch.sin(7 * freqs)]))
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1, 1, 0, 0, 0]))


def test_bf16_and_fp16_close_to_fp32(tmp_path):
    ours = _ours_from(_diffusers_unet(TINY), TINY, tmp_path)
    x, context = torch.randn(2, 4, 16, 16), torch.randn(2, 7, 32)
    with torch.inference_mode():
        ref = ours(x, torch.tensor([3, 500]), context)
        for dtype, tol in ((torch.bfloat16, 5e-2), (torch.float16, 1e-2)):
            out = ours.to(dtype)(x.to(dtype), torch.tensor([3, 500]), context)
            assert out.dtype == dtype
            assert torch.isfinite(out).all()
            assert _rel_err(out, ref) < tol, dtype
        assert ours(x, 3, context).dtype == torch.float32    # fp32 latents in, fp32 eps out of a fp16 model


def test_strict_load_rejects_missing_key():
    ref = _diffusers_unet(TINY)
    state = unet_from_diffusers(ref.state_dict(), TINY)
    del state["middle_block.1.proj_in.weight"]
    with pytest.raises(RuntimeError, match="Missing key"):
        UNetModel(TINY).load_state_dict(state, strict=True)


def test_mapping_rejects_unknown_key():
    with pytest.raises(ValueError, match="no CompVis counterpart"):
        unet_from_diffusers({"add_embedding.linear_1.weight": torch.zeros(1)}, TINY)


def test_config_validation():
    with pytest.raises(ValueError, match="exactly one"):
        UNetConfig(num_heads=8, num_head_channels=64)
    with pytest.raises(ValueError, match="norm_num_groups"):
        UNetConfig(model_channels=48)
    with pytest.raises(ValueError, match="split into heads"):
        UNetConfig(num_heads=-1, num_head_channels=96)
    assert UNetConfig(channel_mult=[1, 2, 4, 4]) == UNetConfig()


def test_sd_v1_parameter_count_and_keys():
    with torch.device("meta"):
        model = UNetModel(UNetConfig())
    assert sum(p.numel() for p in model.parameters()) == SD_V1_PARAMS
    state = model.state_dict()
    assert len(state) == 686
    # A few CompVis names from sd-v1-4.ckpt (after stripping model.diffusion_model.)
    assert state["input_blocks.1.1.proj_in.weight"].shape == (320, 320, 1, 1)
    assert state["input_blocks.3.0.op.weight"].shape == (320, 320, 3, 3)
    assert state["input_blocks.4.0.skip_connection.weight"].shape == (640, 320, 1, 1)
    assert state["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape == (1280, 768)
    assert state["output_blocks.2.1.conv.weight"].shape == (1280, 1280, 3, 3)
    assert state["output_blocks.5.2.conv.weight"].shape == (1280, 1280, 3, 3)
    assert state["output_blocks.8.2.conv.weight"].shape == (640, 640, 3, 3)
    assert state["output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight"].shape == (2560, 320)
    assert state["out.2.weight"].shape == (4, 320, 3, 3)


@pytest.mark.slow
def test_matches_diffusers_full_sd_v1(tmp_path):
    assert _compare(UNetConfig(), tmp_path, x_shape=(1, 4, 32, 32), context_len=77) <= REL_TOL
