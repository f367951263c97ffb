"""VAE parity with diffusers' AutoencoderKL (random weights moved through our key mapping and a safetensors file)."""
import pytest
import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL
from safetensors.torch import load_file, save_file

from ldm.convert.vae import vae_from_diffusers
from ldm.models.autoencoder import SD_LATENT_SCALE, AutoencoderConfig, AutoencoderKL

# Three levels (two downsamplings), two ResnetBlocks per level, a width change at level 1: every key kind appears.
TINY = AutoencoderConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, norm_num_groups=8)
REL_TOL = 1e-5


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _diffusers_vae(cfg: AutoencoderConfig) -> DiffusersAutoencoderKL:
    torch.manual_seed(0)
    n = len(cfg.ch_mult)
    ref = DiffusersAutoencoderKL(
        in_channels=cfg.in_channels, out_channels=cfg.out_ch, latent_channels=cfg.z_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult), layers_per_block=cfg.num_res_blocks,
        norm_num_groups=cfg.norm_num_groups,
    ).eval()
    with torch.no_grad():  # default init leaves biases and norms trivial; perturb every tensor so they count
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ref


def _ours_from(ref: DiffusersAutoencoderKL, cfg: AutoencoderConfig, tmp_path) -> AutoencoderKL:
    path = tmp_path / "vae.safetensors"
    save_file(vae_from_diffusers(ref.state_dict()), str(path))
    ours = AutoencoderKL(cfg).eval()
    ours.load_state_dict(load_file(str(path)), strict=True)
    return ours


def _check_parity(cfg: AutoencoderConfig, size: int, tmp_path) -> None:
    ref = _diffusers_vae(cfg)
    ours = _ours_from(ref, cfg, tmp_path)
    image = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        posterior = ref.encode(image).latent_dist
        mean, logvar = ours.encode_moments(image)
        assert _rel_err(mean, posterior.mean) <= REL_TOL
        assert _rel_err(logvar, posterior.logvar) <= REL_TOL
        z = torch.randn_like(mean)
        assert _rel_err(ours.decode(z), ref.decode(z).sample) <= REL_TOL
        round_trip_ref = ref.decode(posterior.mean).sample
        round_trip = ours.decode(ours.encode(image))
    f = cfg.downsample_factor
    assert mean.shape == (2, cfg.embed_dim, size // f, size // f)
    assert round_trip.shape == image.shape
    assert _rel_err(round_trip, round_trip_ref) <= REL_TOL


def test_parity_with_diffusers_tiny(tmp_path):
    _check_parity(TINY, 16, tmp_path)


@pytest.mark.slow
def test_parity_with_diffusers_sd_v1(tmp_path):
    _check_parity(AutoencoderConfig(), 64, tmp_path)


def test_sd_v1_parameter_count_and_names():
    with torch.device("meta"):
        vae = AutoencoderKL(AutoencoderConfig())
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    shapes = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert shapes["encoder.conv_in.weight"] == (128, 3, 3, 3)
    assert shapes["encoder.down.1.block.0.nin_shortcut.weight"] == (256, 128, 1, 1)
    assert shapes["encoder.down.2.downsample.conv.weight"] == (512, 512, 3, 3)
    assert "encoder.down.3.downsample.conv.weight" not in shapes
    assert shapes["encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    assert shapes["encoder.conv_out.weight"] == (8, 512, 3, 3)
    assert shapes["quant_conv.weight"] == (8, 8, 1, 1)
    assert shapes["post_quant_conv.weight"] == (4, 4, 1, 1)
    assert shapes["decoder.up.3.block.2.conv2.weight"] == (512, 512, 3, 3)
    assert shapes["decoder.up.1.block.0.nin_shortcut.weight"] == (256, 512, 1, 1)
    assert shapes["decoder.up.1.upsample.conv.weight"] == (256, 256, 3, 3)
    assert "decoder.up.0.upsample.conv.weight" not in shapes
    assert shapes["decoder.conv_out.weight"] == (3, 128, 3, 3)


def test_mapping_accepts_legacy_attention_names(tmp_path):
    state = _diffusers_vae(TINY).state_dict()
    legacy_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, value in state.items():
        for new, old in legacy_names.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        legacy[key] = value
    assert legacy.keys() != state.keys()
    mapped, mapped_legacy = vae_from_diffusers(state), vae_from_diffusers(legacy)
    assert mapped.keys() == mapped_legacy.keys() == AutoencoderKL(TINY).state_dict().keys()
    assert all(torch.equal(mapped[k], mapped_legacy[k]) for k in mapped)


def test_mapping_rejects_foreign_keys():
    state = _diffusers_vae(TINY).state_dict()
    with pytest.raises(ValueError, match="unexpected key"):
        vae_from_diffusers({**state, "encoder.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="up_blocks"):
        vae_from_diffusers({"quant_conv.weight": torch.zeros(8, 8, 1, 1)})


def test_latent_scale_round_trip():
    vae = AutoencoderKL(TINY).eval()
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = vae.encode_latent(image)
        torch.testing.assert_close(z, SD_LATENT_SCALE * vae.encode(image))
        torch.testing.assert_close(vae.decode_latent(z), vae.decode(z / SD_LATENT_SCALE))
        torch.testing.assert_close(vae.decode_latent(2.0 * z, scale=2.0), vae.decode(z))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_close_to_fp32(dtype):
    vae = AutoencoderKL(TINY).eval()
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        ref = vae.decode(vae.encode(image))
        low = vae.to(dtype).decode(vae.encode(image.to(dtype)))
    assert low.dtype == dtype
    assert torch.isfinite(low).all()
    assert _rel_err(low.float(), ref) < 0.05


def test_invalid_inputs():
    vae = AutoencoderKL(TINY)
    with pytest.raises(ValueError, match="multiples of 4"):
        vae.encode(torch.zeros(1, 3, 18, 16))
    with pytest.raises(ValueError, match="image"):
        vae.encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match="latent"):
        vae.decode(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="norm_num_groups"):
        AutoencoderConfig(ch=30, norm_num_groups=32)


def test_decoder_head_and_tail_compose_to_forward():
    torch.manual_seed(0)
    vae = AutoencoderKL(TINY).eval()
    z = torch.randn(2, TINY.z_channels, 6, 5)
    with torch.no_grad():
        full = vae.decoder(z)
        for k in range(len(vae.decoder.up) + 1):
            h = vae.decoder.head(z, k)
            assert h.shape[-2:] == (6 * 2 ** min(k, len(vae.decoder.up) - 1), 5 * 2 ** min(k, len(vae.decoder.up) - 1))
            torch.testing.assert_close(vae.decoder.tail(h, k), full, rtol=0, atol=0)
        for bad in (-1, len(vae.decoder.up) + 1):
            with pytest.raises(ValueError, match="levels"):
                vae.decoder.head(z, bad)
