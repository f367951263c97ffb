"""Schedules: SD-v1 alpha-bar values, DDIM timesteps, RePaint operation lists and SDEdit starts against hand tables."""
import pytest
import torch

from ldm.sampling.ddim import ddim_sigma
from ldm.sampling.schedule import (
    ddim_alpha_bars,
    ddim_timesteps,
    repaint_schedule,
    scaled_linear_betas,
    sd_alphas_cumprod,
    sdedit_start,
    sdedit_steps,
)

# Written out by hand from "c = 1000 // 50 = 20, [0, 20, ..., 980] + 1".
TIMESTEPS_50 = [
    1, 21, 41, 61, 81, 101, 121, 141, 161, 181, 201, 221, 241, 261, 281, 301, 321, 341, 361, 381,
    401, 421, 441, 461, 481, 501, 521, 541, 561, 581, 601, 621, 641, 661, 681, 701, 721, 741, 761, 781,
    801, 821, 841, 861, 881, 901, 921, 941, 961, 981,
]


def test_betas_and_alpha_bar_match_reference_values():
    betas = scaled_linear_betas()
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(0.00085, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.012, rel=1e-12)
    a = sd_alphas_cumprod()
    # values quoted in ALGORITHM.md section 1 (5-6 significant digits)
    expected = {0: 0.99915, 1: 0.998296, 241: 0.68850, 391: 0.43898, 981: 0.0057755, 991: 0.0051301, 999: 0.0046601}
    for t, value in expected.items():
        assert a[t].item() == pytest.approx(value, rel=2e-5), t


def test_ddim_timesteps_tables():
    assert ddim_timesteps(50) == TIMESTEPS_50
    t100 = ddim_timesteps(100)
    assert len(t100) == 100 and t100[:3] == [1, 11, 21] and t100[-1] == 991
    # non-divisors give more steps, as in the reference
    assert len(ddim_timesteps(60)) == 63
    assert len(ddim_timesteps(30)) == 31
    assert len(ddim_timesteps(80)) == 84
    assert ddim_timesteps(1) == [1]
    assert ddim_timesteps(500)[-1] == 999
    # the reference indexes alpha_bar[1000] when the stride divides 999; that step is dropped
    assert ddim_timesteps(3) == [1, 334, 667] and ddim_timesteps(27)[-1] == 963
    assert all(0 < t < 1000 for n in range(1, 501) for t in ddim_timesteps(n))


@pytest.mark.parametrize("bad", [0, -3, 501, 1000, 1001, 2.0])
def test_ddim_timesteps_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="num_steps"):
        ddim_timesteps(bad)


def test_alpha_prev_at_first_step_is_alpha_bar_0_and_sigmas():
    a_bar = sd_alphas_cumprod()
    a, a_prev = ddim_alpha_bars(a_bar, TIMESTEPS_50)
    assert a_prev[0] == a_bar[0].item()  # 0.99915, not 1.0
    assert a_prev[1:] == a[:-1]
    assert ddim_sigma(a[49], a_prev[49], 1.0) == pytest.approx(0.4545, abs=1e-4)
    assert ddim_sigma(a[0], a_prev[0], 1.0) == pytest.approx(0.0206, abs=1e-4)
    assert ddim_sigma(a[10], a_prev[10], 0.0) == 0.0


def test_repaint_r0_is_plain_ddim_for_any_jump():
    plain = [("denoise", i) for i in range(5, -1, -1)]
    for jump in (0, 1, 2, 4, 10):
        assert repaint_schedule(6, 0, jump) == plain


def test_repaint_schedule_per_step_table():
    D, R = "denoise", "renoise"
    # RePaint Alg. 1: every step but the last (t = 1, our step 0) is resampled
    assert repaint_schedule(3, 2, 0) == [
        (D, 2), (R, 2, 2), (D, 2), (R, 2, 2), (D, 2),
        (D, 1), (R, 1, 1), (D, 1), (R, 1, 1), (D, 1),
        (D, 0),
    ]
    assert repaint_schedule(3, 1, 1) == repaint_schedule(3, 1, 0)  # j = 0 spells j = 1


def test_repaint_schedule_jump_table():
    D, R = "denoise", "renoise"
    # n = 5, j = 2: windows [4, 3], [2, 1] as RePaint's get_schedule_jump; step 0 once; each window r + 1 = 2 times
    assert repaint_schedule(5, 1, 2) == [
        (D, 4), (D, 3), (R, 3, 4), (D, 4), (D, 3),
        (D, 2), (D, 1), (R, 1, 2), (D, 2), (D, 1),
        (D, 0),
    ]
    ops = repaint_schedule(50, 5, 0)
    assert sum(op[0] == D for op in ops) == 49 * 6 + 1  # reference: 300 (it also repeats the last step)
    assert sum(op[0] == R for op in ops) == 49 * 5  # reference: 244 (skips at the first level, wraps at the last)


@pytest.mark.parametrize("n, r, j", [(20, 1, 5), (20, 2, 5), (21, 1, 5), (7, 3, 1), (10, 1, 3), (4, 2, 4)])
def test_repaint_windows_follow_get_schedule_jump(n, r, j):
    """RePaint's windows are steps 1..j, j+1..2j, ... below n; the final step 0 and a partial top window run once.

    n = 20, j = 5 repeats steps 1-15 (RePaint), not 0-19."""
    ops = repaint_schedule(n, r, j)
    runs = {i: ops.count(("denoise", i)) for i in range(n)}
    resampled_top = (n - 1) // j * j
    assert runs == {i: r + 1 if 1 <= i <= resampled_top else 1 for i in range(n)}
    if (n, j) == (20, 5):
        assert {i for i, c in runs.items() if c > 1} == set(range(1, 16))
    assert ops[-1] == ("denoise", 0)
    renoises = [op[1:] for op in ops if op[0] == "renoise"]
    assert renoises == [(k * j + 1, (k + 1) * j) for k in reversed(range(resampled_top // j)) for _ in range(r)]


def test_repaint_schedule_rejects_negative():
    with pytest.raises(ValueError):
        repaint_schedule(5, -1, 0)
    with pytest.raises(ValueError):
        repaint_schedule(5, 1, -2)


def test_sdedit_start_matches_reference_semantics():
    assert sdedit_steps(0.4, 100) == (40, 391)
    assert sdedit_steps(0.25, 100) == (25, 241)
    assert sdedit_steps(0.35, 100) == (35, 341)
    assert sdedit_steps(1.0, 50) == (50, 981)
    assert sdedit_steps(0.29, 100) == (29, 281)  # reference int(28.999...) would give 28
    start = sdedit_start(0.4, 100)
    assert start.alpha_bar_start == pytest.approx(0.43898, rel=2e-5)
    assert start.noise_std == pytest.approx(0.749, abs=1e-3)
    assert sdedit_start(0.0, 100).num_steps_run == 0


@pytest.mark.parametrize("strength", [-0.1, 1.01, 0.005])
def test_sdedit_start_rejects_bad_strength(strength):
    with pytest.raises(ValueError, match="strength"):
        sdedit_start(strength, 100)
