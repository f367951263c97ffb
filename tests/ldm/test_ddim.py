"""DDIM update rules, forward noising, CFG, and parity with diffusers' DDIMScheduler configured as SD v1."""
import dataclasses
import math

import pytest
import torch
from diffusers import DDIMScheduler

from ldm.sampling.ddim import ddim_step, eta_limit, predict_eps, predict_x0, q_sample, renoise
from ldm.sampling.guidance import cfg_combine, guided_model
from ldm.sampling.loop import SampleNoise, SamplerConfig, sample
from ldm.sampling.schedule import ddim_alpha_bars, ddim_timesteps, max_eta, sd_alphas_cumprod

SHAPE = (2, 4, 8, 8)


def fake_eps(x, t, context):
    """Analytic stand-in for a UNet: eps = 0.1 x + 0.01 t/1000 mean(context), per sample."""
    c = context.mean(dim=(1, 2)).view(-1, 1, 1, 1)
    return 0.1 * x + 0.01 * (t.to(x.dtype) / 1000).view(-1, 1, 1, 1) * c


def sd_v1_ddim(alpha_bar=None):
    """diffusers' DDIM as SD v1 uses it (CompVis timesteps: leading + offset 1, alpha_prev at step 0 = alpha_bar_0)."""
    sched = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
    )
    if alpha_bar is not None:  # swap in our float64 alpha-bar (diffusers computes its own in float32)
        sched.alphas_cumprod = alpha_bar
        sched.final_alpha_cumprod = alpha_bar[0]
    return sched


def test_predict_x0_inverts_q_sample_and_v_round_trip():
    x0, eps = torch.randn(2, *SHAPE, dtype=torch.float64).unbind(0)
    a = 0.3
    x_t = q_sample(x0, a, eps)
    torch.testing.assert_close(predict_x0(x_t, eps, a), x0, rtol=0, atol=1e-12)
    v = math.sqrt(a) * eps - math.sqrt(1 - a) * x0
    torch.testing.assert_close(predict_eps(x_t, v, a), eps, rtol=0, atol=1e-12)


def test_ddim_step_eta0_with_exact_eps_lands_on_q_sample():
    x0, eps = torch.randn(2, *SHAPE, dtype=torch.float64).unbind(0)
    x_prev, x0_hat = ddim_step(q_sample(x0, 0.2, eps), eps, 0.2, 0.7, eta=0.0)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(x_prev, q_sample(x0, 0.7, eps), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="noise"):
        ddim_step(x0, eps, 0.2, 0.7, eta=1.0)


def test_renoise_composes_to_the_forward_marginal():
    gen = torch.Generator().manual_seed(3)
    x0 = torch.full((200_000,), 0.5, dtype=torch.float64)
    n1, n2 = torch.randn(2, 200_000, generator=gen, dtype=torch.float64).unbind(0)
    x_to = renoise(q_sample(x0, 0.8, n1), 0.8, 0.3, n2)
    assert x_to.mean().item() == pytest.approx(math.sqrt(0.3) * 0.5, abs=5e-3)
    assert x_to.std().item() == pytest.approx(math.sqrt(0.7), rel=1e-2)
    with pytest.raises(ValueError):
        renoise(x0, 0.3, 0.8, n2)


@pytest.mark.parametrize("prediction, tol", [("eps", 1e-12), ("v", 1e-10)])
def test_ddim_step_matches_diffusers_step_float64(prediction, tol):
    """One DDIM step of an eps (SD 1.x) or v (SD 2.x 768-v) model's output against diffusers' scheduler."""
    alpha_bar = sd_alphas_cumprod()
    sched = sd_v1_ddim(alpha_bar) if prediction == "eps" else sd_v2_v_ddim(alpha_bar)
    sched.set_timesteps(50)
    a, a_prev = ddim_alpha_bars(alpha_bar, ddim_timesteps(50))
    x, out, noise = torch.randn(3, *SHAPE, dtype=torch.float64).unbind(0)
    for i in (49, 25, 1, 0):
        t = ddim_timesteps(50)[i]
        ref = sched.step(out, t, x, eta=1.0, variance_noise=noise)
        eps = out if prediction == "eps" else predict_eps(x, out, a[i])
        ours, x0_hat = ddim_step(x, eps, a[i], a_prev[i], 1.0, noise)
        torch.testing.assert_close(ours, ref.prev_sample, rtol=tol, atol=tol)
        torch.testing.assert_close(x0_hat, ref.pred_original_sample, rtol=tol, atol=tol)


def _diffusers_trajectory(sched, eta, context, uncond, scale, noise):
    """Plain diffusers DDIM loop with CFG, fed the same noise streams as our sampler."""
    x = noise.draw("init")
    for t in sched.timesteps:
        t_batch = torch.full((SHAPE[0],), int(t))
        eps_u, eps_c = fake_eps(x, t_batch, uncond), fake_eps(x, t_batch, context)
        eps = eps_u + scale * (eps_c - eps_u)
        x = sched.step(eps, t, x, eta=eta, variance_noise=noise.draw("step") if eta > 0 else None).prev_sample
    return x


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("own_alpha_bar", [False, True])
def test_sampler_trajectory_matches_diffusers(eta, own_alpha_bar):
    alpha_bar = sd_alphas_cumprod()
    sched = sd_v1_ddim(alpha_bar if own_alpha_bar else None)
    sched.set_timesteps(50)
    assert sched.timesteps.tolist() == ddim_timesteps(50)[::-1]
    context, uncond = torch.randn(2, 3, 8), torch.randn(1, 3, 8)
    seeds = (11, 12)
    make_gens = lambda: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    config = SamplerConfig(eta=eta, guidance_scale=7.5, progress=False)
    ours = sample(fake_eps, config, generators=make_gens(), context=context, uncond_context=uncond, shape=SHAPE)
    ref = _diffusers_trajectory(sched, eta, context, uncond.expand(2, -1, -1), 7.5, SampleNoise(make_gens(), SHAPE))
    rel = ((ours - ref).norm() / ref.norm()).item()
    # our float64 alpha-bar in both: identical float32 arithmetic; diffusers' own float32 alpha-bar: ~7e-7
    assert rel <= (1e-7 if own_alpha_bar else 1e-6), rel
    assert ref.abs().max() > 0.1  # not a degenerate trajectory


def test_diffusers_float32_alpha_bar_is_close_to_our_float64():
    ours = sd_alphas_cumprod()
    theirs = sd_v1_ddim().alphas_cumprod
    assert (theirs.double() - ours).abs().max().item() < 1e-6


def test_cfg_combine_and_guided_model_batching():
    calls = []

    def model(x, t, context):
        calls.append((x.shape[0], t.tolist(), context[:, 0, 0].tolist()))
        return x * context[:, :1, :1].unsqueeze(1)  # [N, C, h, w], depends on the context value

    x = torch.ones(2, 1, 2, 2)
    t = torch.tensor([5, 5])
    cond, uncond = torch.full((2, 3, 4), 2.0), torch.full((1, 3, 4), -1.0)
    out = guided_model(model, cond, uncond, 3.0)(x, t)
    assert calls == [(4, [5, 5, 5, 5], [-1.0, -1.0, 2.0, 2.0])]  # one call, ordered [uncond, cond]
    torch.testing.assert_close(out, torch.full_like(x, -1.0 + 3.0 * (2.0 + 1.0)))
    torch.testing.assert_close(cfg_combine(torch.zeros(3), torch.ones(3), 1.0), torch.ones(3))
    calls.clear()
    torch.testing.assert_close(guided_model(model, cond, uncond, 1.0)(x, t), 2.0 * x)  # scale 1: cond only
    assert calls[0][0] == 2
    with pytest.raises(ValueError, match="uncond_context"):
        guided_model(model, cond, None, 7.5)


def test_ddim_step_above_the_eta_limit_names_eta_and_the_limit():
    """Issue 23: eta 1.1 on SD's 50-step schedule was 'math domain error'; max_eta itself still steps."""
    a_bar = sd_alphas_cumprod()
    a, a_prev = ddim_alpha_bars(a_bar, ddim_timesteps(50))
    x, eps, noise = torch.randn(3, 1, 4, 8, 8).unbind(0)
    limit = max_eta(50)
    assert limit == pytest.approx(eta_limit(a[1], a_prev[1]))
    for i in range(50):
        x_prev, _ = ddim_step(x, eps, a[i], a_prev[i], limit, noise)
        assert torch.isfinite(x_prev).all()
    with pytest.raises(ValueError, match=r"eta must be <= 1\.0455.* got 1\.1"):
        ddim_step(x, eps, a[1], a_prev[1], 1.1, noise)


# --- v-prediction (SD 2.x 768-v) --------------------------------------------------------------------------------

def fake_v(x, t, context):
    """Analytic stand-in for a v-prediction UNet."""
    return -0.3 * x + 0.02 * (t.to(x.dtype) / 1000).view(-1, 1, 1, 1) * context.mean(dim=(1, 2)).view(-1, 1, 1, 1)


def sd_v2_v_ddim(alpha_bar):
    """diffusers' DDIM as SD 2.x 768-v is configured (scheduler_config.json), with our float64 alpha-bar."""
    sched = sd_v1_ddim(alpha_bar)
    sched.register_to_config(prediction_type="v_prediction")
    return sched


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_v_prediction_trajectory_matches_diffusers(eta):
    alpha_bar = sd_alphas_cumprod()
    sched = sd_v2_v_ddim(alpha_bar)
    sched.set_timesteps(50)
    context, uncond = torch.randn(2, 3, 8), torch.randn(1, 3, 8)
    make_gens = lambda: [torch.Generator().manual_seed(s) for s in (21, 22)]  # noqa: E731
    config = SamplerConfig(eta=eta, guidance_scale=7.5, prediction_type="v", progress=False)
    ours = sample(fake_v, config, generators=make_gens(), context=context, uncond_context=uncond, shape=SHAPE)
    noise = SampleNoise(make_gens(), SHAPE)
    x = noise.draw("init")
    for t in sched.timesteps:
        t_batch = torch.full((SHAPE[0],), int(t))
        v_u, v_c = fake_v(x, t_batch, uncond.expand(2, -1, -1)), fake_v(x, t_batch, context)
        x = sched.step(v_u + 7.5 * (v_c - v_u), t, x, eta=eta,
                       variance_noise=noise.draw("step") if eta > 0 else None).prev_sample
    assert x.abs().max() > 0.1
    assert ((ours - x).norm() / x.norm()).item() <= 1e-5
    eps_run = sample(fake_v, dataclasses.replace(config, prediction_type="eps"), generators=make_gens(),
                     context=context, uncond_context=uncond, shape=SHAPE)
    assert ((eps_run - x).norm() / x.norm()).item() > 1e-2       # the parameterisation matters
