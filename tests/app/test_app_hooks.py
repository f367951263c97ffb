"""The pipeline's progress hooks the web app uses: on_stage / on_step of run_msbd and edit (tiny random weights)."""
from __future__ import annotations

import numpy as np
import pytest

from msbd.cli_edit import edit
from msbd.config import MSBDConfig
from msbd.models import build_bundle
from msbd.pipeline import run_msbd


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def bundle():
    return build_bundle("tiny-test", seed=0)


def tiny_config() -> MSBDConfig:
    cfg = MSBDConfig.for_native_size(32, seed=3)
    cfg.first_stage.steps, cfg.first_stage.batch, cfg.first_stage.repaint_steps = 3, 2, 1
    cfg.upscale.steps, cfg.upscale.strength, cfg.upscale.grid_strength = 4, 0.5, 0.5
    cfg.upscale.mode, cfg.decoder_opt.enabled = "bilinear", False
    return cfg


def scene() -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(0).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    mask = np.zeros((80, 96), np.float32)
    mask[20:50, 30:70] = 1
    return image, mask


def test_on_step_counts_every_unet_call_and_changes_nothing(bundle):
    image, mask = scene()
    steps, stages = [], []
    hooked = run_msbd(image, mask, "a red cube", tiny_config(), bundle, on_stage=stages.append, on_step=steps.append)
    plain = run_msbd(image, mask, "a red cube", tiny_config(), bundle)
    total = sum(s.model_calls for s in hooked.stages)
    assert total > 0 and steps == list(range(1, total + 1))
    assert stages[0] == "first" and stages[-1] == "paste" and any(":" in s and "tiles" in s for s in stages)
    assert np.array_equal(hooked.image, plain.image)


def test_raising_hook_stops_edit_and_writes_nothing(bundle, tmp_path):
    image, mask = scene()
    from PIL import Image
    Image.fromarray(image).save(tmp_path / "in.png")
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    calls = []

    def stop_at_3(n: int) -> None:
        calls.append(n)
        if n == 3:
            raise Stop

    with pytest.raises(Stop):
        edit(tmp_path / "in.png", tmp_path / "mask.png", "a red cube", tmp_path / "out.png", tiny_config(), bundle,
             progress=False, on_step=stop_at_3)
    assert calls == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "mask.png"]
    # the stage hook reaches edit's caller too, and the edit then completes
    names = []
    edit(tmp_path / "in.png", tmp_path / "mask.png", "a red cube", tmp_path / "out.png", tiny_config(), bundle,
         progress=False, on_stage=names.append)
    assert names[0] == "first" and (tmp_path / "out.png").is_file()


def test_on_tick_runs_between_decoder_optimisation_steps_and_can_stop_it(bundle):
    """on_tick fires after every Adam step of decoder optimisation (where no UNet call gives on_step a chance), so
    the app's cancel stops a run there too; the decoder's weights are restored when it raises."""
    import torch
    image, mask = scene()
    cfg = tiny_config()
    cfg.decoder_opt.enabled, cfg.decoder_opt.iterations = True, 3
    ticks: list[int] = []
    run_msbd(image, mask, "a red cube", tiny_config(), bundle, on_tick=lambda: ticks.append(1))
    assert ticks == []                                       # decoder optimisation off: no tick
    run_msbd(image, mask, "a red cube", cfg, bundle, on_tick=lambda: ticks.append(1))
    assert len(ticks) > cfg.decoder_opt.iterations           # the first stage's 3 steps and the grid stage's
    before = {k: v.clone() for k, v in bundle.vae.state_dict().items()}

    def stop_on_second() -> None:
        ticks.append(1)
        if len(ticks) > 1:
            raise Stop

    ticks.clear()
    with pytest.raises(Stop):
        run_msbd(image, mask, "a red cube", cfg, bundle, on_tick=stop_on_second)
    assert len(ticks) == 2
    assert all(torch.equal(before[k], v) for k, v in bundle.vae.state_dict().items())
    assert not any(p.requires_grad for p in bundle.vae.parameters())


def test_an_input_rewritten_during_the_edit_does_not_mix_into_the_output(bundle, tmp_path):
    """The output's outside pixels are the input as it was read before the models ran, not a file changed since."""
    from PIL import Image
    image, mask = scene()
    Image.fromarray(image).save(tmp_path / "in.png")
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "mask.png")

    def rewrite(name: str) -> None:
        if name == "first":
            Image.fromarray(255 - image).save(tmp_path / "in.png")

    edit(tmp_path / "in.png", tmp_path / "mask.png", "a red cube", tmp_path / "out.png", tiny_config(), bundle,
         progress=False, on_stage=rewrite)
    out = np.asarray(Image.open(tmp_path / "out.png"))
    outside = mask < 0.5
    assert np.array_equal(out[outside], image[outside])
