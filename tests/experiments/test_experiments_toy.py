"""Every experiment runs on `model=toy` (the shipped, trained toy-world weights) out of the box.

test_experiments.py runs them on random tiny weights; this runs each once more through the real toy bundle
(the CompVis-layout checkpoint, the spandrel-loaded x4 SR, the open_clip reranker) at the toy's native geometry,
with few steps so that the whole file stays at a few minutes on one core. Slow: `pytest -m slow`.
"""
import csv
import json
import os

import numpy as np
import pytest
from _experiment_helpers import compose_experiment, run_experiment
from PIL import Image

from msbd.toy import presets

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not all(os.path.isfile(f) for f in (presets.LDM_WEIGHTS, presets.SR_WEIGHTS,
                                                           presets.CLIP_WEIGHTS)),
                       reason="the toy weights are not in msbd/toy/weights"),
]

FEW = ["model=toy", "progress=false", "threads=1", "msbd.first_stage.steps=3", "msbd.first_stage.batch=2",
       "msbd.upscale.steps=4", "msbd.decoder_opt.iterations=1", "msbd.first_stage.repaint_steps=1"]
CASES = "{tasks: [0], sizes: [256]}"


def _run(tmp_path, experiment, *overrides):
    cfg = compose_experiment(tmp_path, experiment, *FEW, *overrides)
    assert cfg.model.name == "toy" and cfg.msbd.first_stage.size == 128
    return run_experiment(tmp_path, experiment, *FEW, *overrides, check=True)   # check: weights files exist


@pytest.mark.parametrize("experiment, overrides, n_variants", [
    ("ablation_upscaler", [f"ablation_upscaler.cases={CASES}"], 6),
    ("ablation_repaint", ["ablation_repaint.cases={tasks: [0], sizes: [128]}", "ablation_repaint.repaint_steps=[0,2]"],
     2),
    ("seeds", [f"seeds.cases={CASES}", "seeds.n_seeds=2"], 2),
    ("baselines", [f"baselines.cases={CASES}"], 4),
    ("eval", ["eval.tasks=[0]", "eval.sizes=[256]", "eval.masks=[large]"], 6),
])
def test_variant_experiments_on_toy(tmp_path, experiment, overrides, n_variants):
    done = _run(tmp_path, experiment, *overrides)
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len({r["variant"] for r in rows}) == n_variants == len(done["summary"])
    assert all(float(r["psnr_outside"]) == float("inf") for r in rows)
    assert all(int(r["count"]) >= 0 and float(r["seconds"]) > 0 for r in rows)
    assert Image.open(tmp_path / "figure.png").size[0] > 200


def test_demo_on_toy(tmp_path):
    _run(tmp_path, "demo", "demo.size=256", "demo.aspect=1.5")
    out = np.asarray(Image.open(tmp_path / "output.png"))
    inp = np.asarray(Image.open(tmp_path / "input.png"))
    mask = np.asarray(Image.open(tmp_path / "mask.png")) > 127
    assert out.shape == (256, 384, 3) and (out[~mask] == inp[~mask]).all() and not (out[mask] == inp[mask]).all()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["count"] >= 0 and report["psnr_outside"] == float("inf")


def test_edit_and_paper_on_toy(tmp_path):
    from msbd.toy.scenes import random_edit_task, render, render_mask
    task = random_edit_task(1_000_003, aspect=1.5)
    Image.fromarray(np.asarray(render(task.source, 200, 300))).save(tmp_path / "pic.png")
    Image.fromarray(render_mask(task, 200, 300).astype(np.uint8) * 255).save(tmp_path / "pic_mask.png")
    _run(tmp_path / "edit", "edit", f"image={tmp_path / 'pic.png'}", f"mask={tmp_path / 'pic_mask.png'}",
         f"prompt={task.prompt}", f"output={tmp_path / 'out.png'}")
    saved = Image.open(tmp_path / "out.png")
    hashes = json.loads(saved.text["weights_sha256"])
    assert set(hashes) == {"ldm", "ldm.text_from", "upscaler", "reranker"}   # every file read, the linked CLIP too
    from ldm.checkpoint.formats import sha256_file
    from msbd.toy import presets
    assert hashes["ldm.text_from"] == sha256_file(presets.CLIP_WEIGHTS) == hashes["reranker"]
    (tmp_path / "list.txt").write_text(f"{task.prompt}; pic.png; 1.2\n")
    done = _run(tmp_path / "paper", "paper", f"paper.inputs={tmp_path / 'list.txt'}")
    assert done["summary"]["pic.png"]["outside_identical"] is True


def test_toy_quality_on_toy(tmp_path, capsys):
    done = _run(tmp_path, "toy_quality", "toy_quality.n_vae=4", "toy_quality.n_blur=2", "toy_quality.n_t2i=2", "toy_quality.n_inpaint=2",
                "toy_quality.n_clip=20", "toy_quality.n_sr=1", "toy_quality.n_4x=1", "toy_quality.steps=3")
    figures = json.loads((tmp_path / "quality.json").read_text())["figures"]
    # every bar has a figure from the shipped weights (the reranker and the SR load through open_clip / spandrel)
    assert all(figures.get(name) is not None for name in ("vae_psnr_db", "clip_top1", "sr_gain_db", "t2i_colour_acc"))
    assert figures["vae_psnr_db"] > 20 and figures["clip_top1"] > 0.3
    assert 0 <= figures["vae_shape_kept_latent_blur"] <= 1 and figures["vae_blur_n"] == 2
    assert done["summary"]["overall"] in ("PASS", "FAIL") and "overall: " in capsys.readouterr().out
