"""MSBDConfig.validate / check_multiples / resolve_seed: every bad setting is one ValueError naming it (issue 23)."""
from __future__ import annotations

import dataclasses
import math

import pytest

from ldm.sampling import max_eta
from msbd.config import MSBDConfig, resolve_seed


def _float_settings(node, prefix=""):
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            yield from _float_settings(value, f"{prefix}{f.name}.")
        elif isinstance(value, float):
            yield f"{prefix}{f.name}"


def _set(cfg: MSBDConfig, path: str, value) -> MSBDConfig:
    *parents, name = path.split(".")
    node = cfg
    for p in parents:
        node = getattr(node, p)
    setattr(node, name, value)
    return cfg


FLOAT_SETTINGS = list(_float_settings(MSBDConfig()))


def test_the_float_settings_are_found():
    assert {"first_stage.guidance", "first_stage.eta", "margin", "decoder_opt.lr"} <= set(FLOAT_SETTINGS)


@pytest.mark.parametrize("path", FLOAT_SETTINGS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinite_settings_are_refused_naming_the_setting(path, value):
    with pytest.raises(ValueError, match=rf"^{path.replace('.', '[.]')} must be a finite number") as err:
        _set(MSBDConfig(), path, value).validate()
    assert "\n" not in str(err.value)


def test_eta_up_to_the_schedule_limit_is_accepted_and_above_refused():
    cfg = MSBDConfig()
    limit = min(max_eta(cfg.first_stage.steps), max_eta(cfg.upscale.steps))
    assert 1.0 < limit < 1.1
    _set(cfg, "first_stage.eta", limit).validate()
    with pytest.raises(ValueError, match=r"first_stage\.eta must be <= 1\.045.* 50-step .* got 1\.1"):
        _set(MSBDConfig(), "first_stage.eta", 1.1).validate()
    # the limit depends on the schedule: 2 steps allow eta <= 1.0003 only
    cfg = _set(_set(MSBDConfig(), "first_stage.steps", 2), "first_stage.eta", 1.01)
    with pytest.raises(ValueError, match=r"first_stage\.eta must be <= 1\.0003 for a 2-step"):
        cfg.validate()


def test_steps_beyond_the_schedule_are_refused_naming_the_setting():
    with pytest.raises(ValueError, match=r"^upscale\.steps must be in 1\.\.500, got 501"):
        _set(MSBDConfig(), "upscale.steps", 501).validate()
    with pytest.raises(ValueError, match=r"^first_stage\.steps must be in 1\.\.500, got 0"):
        _set(MSBDConfig(), "first_stage.steps", 0).validate()


def test_seed_minus_one_is_random_other_negatives_refused():
    _set(MSBDConfig(), "seed", -1).validate()
    for bad in (-2, -100):
        with pytest.raises(ValueError, match=r"^seed must be an integer >= 0, or -1 for a random seed"):
            _set(MSBDConfig(), "seed", bad).validate()
    drawn = {resolve_seed(-1) for _ in range(8)}
    assert all(0 <= s < 2**31 for s in drawn) and len(drawn) > 1
    assert resolve_seed(0) == 0 and resolve_seed(12345) == 12345


@pytest.mark.parametrize("path, value", [("first_stage.size", 500), ("grid.tile", 800), ("grid.overlap", 100),
                                         ("decoder_opt.tile", 520)])
def test_sizes_not_a_multiple_of_the_model_are_refused_naming_the_setting(path, value):
    cfg = _set(MSBDConfig(), path, value)
    if path == "first_stage.size":
        cfg.upscale.max_edgelen = 768
    cfg.validate()  # in range: only the model's multiple rules it out
    with pytest.raises(ValueError, match=rf"^{path.replace('.', '[.]')} must be a multiple of 64 .* got {value}"):
        cfg.check_multiples(64)
    MSBDConfig().check_multiples(64)
    MSBDConfig.for_native_size(128).check_multiples(32)


def test_a_strength_that_runs_no_step_is_refused_naming_the_setting():
    """upscale.steps=2 with grid_strength 0.25 failed only when a grid stage ran, with no setting named."""
    cfg = _set(_set(MSBDConfig(), "upscale.steps", 2), "upscale.strength", 0.5)
    with pytest.raises(ValueError, match=r"^upscale\.grid_strength=0\.25 with upscale\.steps=2: .*>= 0\.5"):
        cfg.validate()
    _set(cfg, "upscale.grid_strength", 0.0).validate()  # 0 = no diffusion, allowed
