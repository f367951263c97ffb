"""Invariants of the sampling loop: batch invariance, masks, RePaint, SDEdit, background noise levels, dtypes."""
import math

import pytest
import torch

from ldm.sampling.loop import SampleNoise, SamplerConfig, sample
from ldm.sampling.schedule import ddim_alpha_bars, ddim_timesteps, sd_alphas_cumprod

SHAPE = (2, 4, 8, 8)


def fake_eps(x, t, context):
    """Analytic stand-in for a UNet: eps = 0.1 x + 0.01 t/1000 mean(context), per sample."""
    c = context.mean(dim=(1, 2)).view(-1, 1, 1, 1)
    return 0.1 * x + 0.01 * (t.to(x.dtype) / 1000).view(-1, 1, 1, 1) * c


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def cfg(**kw):
    kw.setdefault("num_steps", 10)
    return SamplerConfig(progress=False, **kw)


@pytest.fixture
def source():
    return torch.arange(math.prod(SHAPE), dtype=torch.float32).reshape(SHAPE) / 256 - 1  # [2, 4, 8, 8]


@pytest.fixture
def context():
    return torch.randn(2, 3, 8), torch.randn(1, 3, 8)


def half_mask(batch=1):
    mask = torch.zeros(batch, 1, 8, 8)
    mask[..., 4:] = 1.0
    return mask


def test_batch_of_five_equals_five_single_runs():
    source = torch.randn(1, 4, 8, 8)
    context = torch.randn(5, 3, 8)
    config = cfg(repaint_steps=1, strength=0.7)
    seeds = (3, 1, 4, 1, 5)
    kw = dict(source=source, mask=half_mask(), uncond_context=torch.zeros(1, 3, 8))
    batch = sample(fake_eps, config, generators=gens(*seeds), context=context, **kw)
    for k, seed in enumerate(seeds):
        single = sample(fake_eps, config, generators=gens(seed), context=context[k : k + 1], **kw)
        torch.testing.assert_close(batch[k : k + 1], single, rtol=0, atol=1e-6)
    assert not torch.allclose(batch[0], batch[2])  # different seeds differ


def test_all_ones_mask_equals_unmasked(source, context):
    ctx, unc = context
    kw = dict(context=ctx, uncond_context=unc, source=source)
    masked = sample(fake_eps, cfg(), generators=gens(1, 2), mask=torch.ones(1, 1, 8, 8), **kw)
    plain = sample(fake_eps, cfg(), generators=gens(1, 2), **kw)
    assert torch.equal(masked, plain)


@pytest.mark.parametrize("background_level", ["reached", "reference"])
def test_all_zeros_mask_returns_source_exactly(source, context, background_level):
    ctx, unc = context
    kw = dict(context=ctx, uncond_context=unc, source=source, mask=torch.zeros(2, 4, 8, 8), generators=gens(1, 2))
    out = sample(fake_eps, cfg(background_level=background_level, repaint_steps=2), **kw)
    assert torch.equal(out, source)
    noisy = sample(fake_eps, cfg(clean_final=False), **kw)  # reference: background noised to the level of t = 1
    assert 0.01 < (noisy - source).std().item() < 0.1


def test_repaint_r0_equals_blended_ddim(source, context):
    ctx, unc = context
    kw = dict(context=ctx, uncond_context=unc, source=source, mask=half_mask())
    blended = sample(fake_eps, cfg(), generators=gens(7, 8), **kw)
    for jump in (0, 3):
        repaint0 = sample(fake_eps, cfg(repaint_steps=0, repaint_jump=jump), generators=gens(7, 8), **kw)
        assert torch.equal(repaint0, blended)
    assert not torch.allclose(sample(fake_eps, cfg(repaint_steps=1), generators=gens(7, 8), **kw), blended)


def test_strength_1_equals_starting_from_noise(source, context):
    ctx, unc = context
    from_source = sample(fake_eps, cfg(strength=1.0), generators=gens(5, 6), context=ctx, uncond_context=unc, source=source)
    from_noise = sample(fake_eps, cfg(), generators=gens(5, 6), context=ctx, uncond_context=unc, shape=SHAPE)
    assert torch.equal(from_source, from_noise)


def test_strength_0_returns_source(source):
    out = sample(fake_eps, cfg(strength=0.0, guidance_scale=1.0), generators=gens(1, 2), source=source)
    assert torch.equal(out, source)


def _record(log):
    return lambda n, t, x, x0_hat: log.append((n, t, x.clone(), x0_hat.clone()))


@pytest.mark.parametrize("quirk", [False, True])
def test_sdedit_start_level_and_steps(source, context, quirk):
    ctx, _ = context
    log = []
    zero_model = lambda x, t, c: torch.zeros_like(x)  # noqa: E731  x0_hat = x / sqrt(alpha_bar) at the first call
    config = cfg(num_steps=100, strength=0.4, eta=0.0, guidance_scale=1.0, sdedit_ref_alpha0=quirk)
    sample(zero_model, config, generators=gens(1, 2), context=ctx, source=source, callback=_record(log))
    assert [entry[1] for entry in log] == list(range(391, 0, -10))  # 40 steps from t = 391
    a_bar = sd_alphas_cumprod()
    a = a_bar[391].item() / (a_bar[0].item() if quirk else 1.0)
    init = SampleNoise(gens(1, 2), SHAPE).draw("init")
    x_start = math.sqrt(a) * source + math.sqrt(1 - a) * init
    torch.testing.assert_close(log[0][3] * math.sqrt(a_bar[391].item()), x_start, rtol=1e-5, atol=1e-6)


def test_callback_and_model_calls_follow_the_repaint_schedule(source):
    log, t_seen = [], []

    def model(x, t, c):
        t_seen.append(int(t[0]))
        return fake_eps(x, t, c)

    config = cfg(num_steps=5, repaint_steps=1, repaint_jump=2, guidance_scale=1.0)
    sample(model, config, generators=gens(1, 2), context=torch.ones(2, 3, 8), source=source,
           mask=half_mask(), callback=_record(log))
    # windows [4, 3], [2, 1] of timesteps [1, 201, 401, 601, 801], each run twice; step 0 once (RePaint)
    expected = [801, 601, 801, 601, 401, 201, 401, 201, 1]
    assert t_seen == expected
    assert [entry[0] for entry in log] == list(range(9)) and [entry[1] for entry in log] == expected
    assert log[0][2].shape == SHAPE and log[0][3].shape == SHAPE


@pytest.mark.parametrize("background_level", ["reached", "reference"])
def test_background_noise_level_matches_analytic_value(background_level):
    """Constant source, keep everything: x after step i is the source noised to the chosen level."""
    shape, value = (8, 4, 16, 16), 0.5
    source = torch.full((1, 4, 16, 16), value)
    log = []
    config = cfg(num_steps=50, guidance_scale=1.0, background_level=background_level, clean_final=False)
    sample(fake_eps, config, generators=gens(*range(8)), context=torch.ones(8, 3, 8), source=source,
           mask=torch.zeros(1, 1, 16, 16), callback=_record(log))
    a, a_prev = ddim_alpha_bars(sd_alphas_cumprod(), ddim_timesteps(50))
    expected, other = (a_prev, a) if background_level == "reached" else (a, a_prev)
    for n, t, x, _ in log:
        i = 49 - n
        assert x.shape == shape
        std = math.sqrt(1 - expected[i])
        assert x.std().item() == pytest.approx(std, rel=0.04), (t, std)
        assert x.mean().item() == pytest.approx(math.sqrt(expected[i]) * value, abs=0.05 * std)
        if i <= 2:  # at low noise the two choices are far apart: one DDIM step changes the std by > 29 %
            assert abs(x.std().item() / math.sqrt(1 - other[i]) - 1) > 0.25


def test_soft_mask_blends_and_keeps_the_known_region(source, context):
    ctx, unc = context
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:] = 0.5  # soft edit region
    out = sample(fake_eps, cfg(), generators=gens(1, 2), context=ctx, uncond_context=unc, source=source, mask=mask)
    assert torch.equal(out[..., :4], source[..., :4])
    assert not torch.allclose(out[..., 4:], source[..., 4:], atol=1e-3)


def test_v_prediction_equals_eps_prediction(source, context):
    ctx, unc = context
    a_bar = sd_alphas_cumprod()

    def v_model(x, t, c):  # the same denoiser, parameterised by v = sqrt(a) eps - sqrt(1 - a) x0
        a = a_bar[t].float().view(-1, 1, 1, 1)
        eps = fake_eps(x, t, c)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    kw = dict(generators=gens(1, 2), context=ctx, uncond_context=unc, source=source, mask=half_mask())
    eps_out = sample(fake_eps, cfg(), **kw)
    kw["generators"] = gens(1, 2)
    v_out = sample(v_model, cfg(prediction_type="v"), **kw)
    torch.testing.assert_close(v_out, eps_out, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_model_keeps_float32_state(source, context, dtype):
    ctx, unc = context
    seen = []

    def model_lp(x, t, c):  # a caller's wrapper: cast in, run in low precision, return low precision
        seen.append(x.dtype)
        return fake_eps(x.to(dtype), t, c.to(dtype))

    kw = dict(context=ctx, uncond_context=unc, source=source, mask=half_mask())
    out = sample(model_lp, cfg(), generators=gens(1, 2), **kw)
    ref = sample(fake_eps, cfg(), generators=gens(1, 2), **kw)
    assert out.dtype == torch.float32 and set(seen) == {torch.float32}
    assert ((out - ref).norm() / ref.norm()).item() < 2e-2


def test_progress_bar_runs(source, capsys):
    sample(fake_eps, SamplerConfig(num_steps=5, guidance_scale=1.0), generators=gens(1, 2),
           context=torch.ones(2, 3, 8), source=source)
    assert "DDIM" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(shape=(3, 4, 8, 8)), "len\\(generators\\)"),
        (dict(shape=SHAPE, mask=torch.ones(1, 1, 8, 8)), "needs a source"),
        (dict(source=torch.zeros(SHAPE), mask=torch.full((1, 1, 8, 8), 1.5)), "\\[0, 1\\]"),
        (dict(source=torch.zeros(SHAPE), mask=torch.ones(1, 1, 4, 4)), "mask size"),
        (dict(source=torch.zeros(3, 4, 8, 8)), "source batch"),
        (dict(), "shape"),
    ],
)
def test_invalid_inputs_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(fake_eps, cfg(guidance_scale=1.0), generators=gens(1, 2), context=torch.ones(2, 3, 8), **kwargs)


def test_invalid_config_raises():
    with pytest.raises(ValueError, match="num_steps"):
        SamplerConfig(num_steps=0)
    with pytest.raises(ValueError, match="strength"):
        SamplerConfig(strength=1.5)
    with pytest.raises(ValueError, match="background_level"):
        SamplerConfig(background_level="next")
    with pytest.raises(ValueError, match="uncond_context"):
        sample(fake_eps, cfg(), generators=gens(1), context=torch.ones(1, 3, 8), shape=(1, 4, 8, 8))


def test_zero_mean_init_centres_only_the_start_noise(context):
    from ldm.sampling.loop import zero_mean
    noise = torch.randn(3, 4, 16, 16) + 0.5
    centred = zero_mean(noise)
    torch.testing.assert_close(centred.mean(dim=(2, 3)), torch.zeros(3, 4), rtol=0, atol=1e-6)
    torch.testing.assert_close(centred.std(dim=(2, 3)), torch.ones(3, 4), rtol=0, atol=1e-5)
    starts = {}
    for flag in (False, True):
        def first_call(x, t, ctx, flag=flag):
            starts.setdefault(flag, x[:1].clone())
            return fake_eps(x, t, ctx)
        sample(first_call, cfg(zero_mean_init=flag, eta=0.0, guidance_scale=1.0), generators=gens(7), shape=(1, 4, 8, 8),
               context=context[0][:1])
    plain = SampleNoise(gens(7), (1, 4, 8, 8)).draw("init")
    torch.testing.assert_close(starts[False], plain, rtol=0, atol=0)           # default: the plain Gaussian draw
    torch.testing.assert_close(starts[True], zero_mean(plain), rtol=0, atol=0)  # option: the same draw, centred


def test_sampler_config_refuses_eta_above_the_schedule_limit():
    from ldm.sampling.schedule import max_eta
    limit = max_eta(50)
    SamplerConfig(num_steps=50, eta=limit)
    with pytest.raises(ValueError, match="eta must be <="):
        SamplerConfig(num_steps=50, eta=limit + 1e-3)
