"""The 9-channel input of inpainting UNets against diffusers' StableDiffusionInpaintPipeline, on tiny random weights.

The pipeline is built from a tiny diffusers UNet with 9 input channels, a tiny AutoencoderKL (its posterior made
near-deterministic: log-variance -30, so diffusers' posterior *sample* equals the mean we use to 3e-7) and a DDIM
scheduler as SD uses it; prompt embeddings are passed in, so no tokenizer is needed. A forward pre-hook on its UNet
records what it is fed. Ours: the same weights through `unet_from_diffusers` / `vae_from_diffusers` into a bundle,
the conditioning from `msbd.inpaint.bundle_condition`, the loop `ldm.sampling.sample` with
`with_inpaint_condition` and no blending (diffusers blends only for 4-channel UNets).
"""
import pytest
import torch

from ldm.config import TINY_TEST, with_inpainting
from ldm.convert.unet import diffusers_unet_kwargs, unet_from_diffusers
from ldm.convert.vae import vae_from_diffusers
from ldm.sampling.inpaint import inpaint_input, latent_mask, masked_image, with_inpaint_condition
from ldm.sampling.loop import SampleNoise, SamplerConfig, sample
from msbd.inpaint import bundle_condition, conditioned_model
from msbd.models import build_bundle, denoiser

diffusers = pytest.importorskip("diffusers")

CONFIG = with_inpainting(TINY_TEST, True)
REL_TOL = 1e-5


@torch.no_grad()
def _perturb(model):
    for p in model.parameters():
        p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    unet = _perturb(diffusers.UNet2DConditionModel(**diffusers_unet_kwargs(CONFIG.unet), sample_size=16))
    c = CONFIG.vae
    n = len(c.ch_mult)
    vae = _perturb(diffusers.AutoencoderKL(
        in_channels=c.in_channels, out_channels=c.out_ch, latent_channels=c.z_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(c.ch * m for m in c.ch_mult), layers_per_block=c.num_res_blocks,
        norm_num_groups=c.norm_num_groups, scaling_factor=CONFIG.scale_factor,
    ))
    with torch.no_grad():                       # posterior std exp(-15): diffusers' sample == the mean
        vae.quant_conv.weight[c.embed_dim:] = 0
        vae.quant_conv.bias[c.embed_dim:] = -30.0
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                        timestep_spacing="leading")
    pipeline = diffusers.StableDiffusionInpaintPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet,
                                                        scheduler=scheduler, safety_checker=None,
                                                        feature_extractor=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _bundle(pipe):
    bundle = build_bundle(CONFIG)
    bundle.unet.load_state_dict(unet_from_diffusers(pipe.unet.state_dict(), CONFIG.unet), strict=True)
    bundle.vae.load_state_dict(vae_from_diffusers(pipe.vae.state_dict()), strict=True)
    return bundle


def _task():
    gen = torch.Generator().manual_seed(2)
    image = torch.rand(1, 3, 32, 32, generator=gen)                              # [0, 1]
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 6:20, 9:27] = 1.0
    mask[..., 20:23, 9:27] = 0.7                                                  # >= 0.5: repaint
    mask[..., 3:6, 9:27] = 0.3                                                    # < 0.5: keep
    context = torch.randn(1, 77, CONFIG.unet.context_dim, generator=gen)
    uncond = torch.randn(1, 77, CONFIG.unet.context_dim, generator=gen)
    return image, mask, context, uncond


def _run_diffusers(pipe, image, mask, context, uncond, latents, steps=3):
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        out = pipe(prompt_embeds=context, negative_prompt_embeds=uncond, image=image, mask_image=mask,
                   height=32, width=32, num_inference_steps=steps, guidance_scale=7.5, eta=0.0, latents=latents,
                   output_type="latent", generator=torch.Generator().manual_seed(0)).images
    finally:
        handle.remove()
    return out, seen


def test_nine_channel_input_matches_diffusers_inpaint_pipeline(pipe):
    image, mask, context, uncond = _task()
    bundle = _bundle(pipe)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    _, seen = _run_diffusers(pipe, image, mask, context, uncond, latents)
    first = seen[0]                                                     # [2, 9, 16, 16]: CFG [uncond, cond]
    assert first.shape == (2, 9, 16, 16)
    torch.testing.assert_close(first[0, 4:], first[1, 4:], rtol=0, atol=0)  # both halves: same conditioning
    cond = bundle_condition(bundle, image, mask)                         # [1, 5, 16, 16]
    ref_mask, ref_latent = first[:1, 4:5], first[:1, 5:]
    assert torch.equal(cond[:, :1], ref_mask)
    assert 0 < ref_mask.mean() < 1 and ref_latent.abs().max() > 0.1
    rel = ((cond[:, 1:] - ref_latent).abs().max() / ref_latent.abs().max()).item()
    assert rel <= REL_TOL, rel
    # the input as a whole, CFG batch included
    x_in = inpaint_input(torch.cat([latents, latents]), cond)
    assert ((x_in - first).abs().max() / first.abs().max()).item() <= REL_TOL


def test_conventions_are_the_released_ones():
    """Mask first, then the masked-image latent; masked pixels are 0 in [-1, 1]; nearest downsampling."""
    image = torch.full((1, 3, 8, 8), 0.8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 0.6
    assert torch.equal(masked_image(image, mask)[..., :4, :], torch.zeros(1, 3, 4, 8))
    assert torch.equal(masked_image(image, mask)[..., 4:, :], image[..., 4:, :])
    m = torch.zeros(1, 1, 8, 8)
    m[..., 1, 1] = 1.0                                       # nearest picks pixel (0, 0) of each 2x2 cell
    assert latent_mask(m, (4, 4)).sum() == 0
    m[..., 0, 0] = 1.0
    assert latent_mask(m, (4, 4))[0, 0, 0, 0] == 1 and latent_mask(m, (4, 4)).sum() == 1
    x = torch.randn(4, 4, 4, 4)
    cond = torch.randn(2, 5, 4, 4)
    out = inpaint_input(x, cond)
    assert torch.equal(out[:, :4], x) and torch.equal(out[2:, 4:], cond) and torch.equal(out[:2, 4:], cond)
    with pytest.raises(ValueError, match="not a multiple"):
        inpaint_input(torch.randn(3, 4, 4, 4), cond)


def test_whole_ddim_loop_matches_diffusers_inpaint_pipeline(pipe):
    """No blending (as diffusers with a 9-channel UNet): our loop on our UNet == the pipeline's latents."""
    image, mask, context, uncond = _task()
    bundle = _bundle(pipe)
    gens = lambda: [torch.Generator().manual_seed(5)]  # noqa: E731
    latents = SampleNoise(gens(), (1, 4, 16, 16)).draw("init")
    ref, _ = _run_diffusers(pipe, image, mask, context, uncond, latents.clone(), steps=4)
    model = conditioned_model(denoiser(bundle), bundle, image, mask)
    ours = sample(model, SamplerConfig(num_steps=4, eta=0.0, guidance_scale=7.5, progress=False), generators=gens(),
                  context=context, uncond_context=uncond, shape=(1, 4, 16, 16))
    assert ref.abs().max() > 0.1
    assert ((ours - ref).abs().max() / ref.abs().max()).item() <= REL_TOL
    plain = sample(with_inpaint_condition(denoiser(bundle), torch.zeros(1, 5, 16, 16)),
                   SamplerConfig(num_steps=4, eta=0.0, guidance_scale=7.5, progress=False), generators=gens(),
                   context=context, uncond_context=uncond, shape=(1, 4, 16, 16))
    assert ((plain - ref).abs().max() / ref.abs().max()).item() > 1e-3      # the conditioning matters
