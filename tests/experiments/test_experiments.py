"""Every experiment config composes and runs to completion on random tiny weights at tiny sizes and few steps.

The runs go through scripts/run.py's own `check` + `run_task` (the code a command line runs, minus the process
start), with `model=random` so no trained weights are needed; each must write its numbers and its figure.
"""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from _experiment_helpers import ROOT, run_experiment, run_script
from hydra import compose, initialize_config_dir
from PIL import Image

TINY = ["model=random", "progress=false", "threads=1", "msbd.first_stage.steps=2", "msbd.first_stage.batch=2",
        "msbd.upscale.steps=4", "msbd.decoder_opt.iterations=1", "msbd.first_stage.repaint_steps=1"]
CASES = "{tasks: [0], sizes: [96]}"


def _run(tmp_path, experiment, *overrides):
    return run_experiment(tmp_path, experiment, *TINY, *overrides)


def _rows(tmp_path):
    with open(tmp_path / "results.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("experiment, overrides, n_variants", [
    ("ablation_upscaler", [f"ablation_upscaler.cases={CASES}"], 6),
    ("ablation_repaint", [f"ablation_repaint.cases={{tasks: [0, 1], sizes: [32]}}", "ablation_repaint.repaint_steps=[0,2]"], 2),
    ("seeds", [f"seeds.cases={CASES}", "seeds.n_seeds=2"], 2),
    ("baselines", [f"baselines.cases={CASES}"], 4),
    ("eval", ["eval.tasks=[0]", "eval.sizes=[64]", "eval.masks=[large]"], 6),
])
def test_variant_experiments(tmp_path, experiment, overrides, n_variants):
    done = _run(tmp_path, experiment, *overrides)
    rows = _rows(tmp_path)
    assert len({r["variant"] for r in rows}) == n_variants == len(done["summary"])
    assert all(float(r["psnr_outside"]) == float("inf") for r in rows)    # paste-back keeps every outside pixel
    table = (tmp_path / "results.md").read_text()
    assert table.count("\n|") >= n_variants + 1 and "±" in table or "n/a" in table
    assert Image.open(tmp_path / "figure.png").size[0] > 200
    assert len(list((tmp_path / "edits").glob("*.png"))) == len(rows)


def test_demo_writes_output_intermediates_report(tmp_path):
    _run(tmp_path, "demo", "demo.size=96", "demo.aspect=1.0")
    out = np.asarray(Image.open(tmp_path / "output.png"))
    inp = np.asarray(Image.open(tmp_path / "input.png"))
    mask = np.asarray(Image.open(tmp_path / "mask.png")) > 127
    assert out.shape == inp.shape and (out[~mask] == inp[~mask]).all()
    assert json.loads(Image.open(tmp_path / "output.png").text["msbd_config"])["first_stage"]["size"] == 32
    assert sorted(p.name for p in (tmp_path / "intermediates").glob("stage_*"))
    report = json.loads((tmp_path / "report.json").read_text())
    assert {"count", "seam", "stages", "seconds"} <= set(report) and (tmp_path / "figure.png").exists()


def test_edit_and_paper_on_a_small_image(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (80, 112, 3), dtype=np.uint8)
    mask = np.zeros((80, 112), dtype=np.uint8)
    mask[20:50, 30:70] = 255
    Image.fromarray(image).save(tmp_path / "pic.png")
    Image.fromarray(mask).save(tmp_path / "pic_mask.png")
    (tmp_path / "list.txt").write_text("# prompt; file; margin\na red star; pic.png; 1.2\n")
    _run(tmp_path / "edit", "edit", f"image={tmp_path / 'pic.png'}", f"mask={tmp_path / 'pic_mask.png'}",
         "prompt=a red star", f"output={tmp_path / 'out.png'}")
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert (out[mask == 0] == image[mask == 0]).all() and not (out[mask > 0] == image[mask > 0]).all()
    done = _run(tmp_path / "paper", "paper", f"paper.inputs={tmp_path / 'list.txt'}")
    assert done["summary"]["pic.png"]["outside_identical"] is True
    assert (tmp_path / "paper" / "pic_edited.png").exists() and (tmp_path / "paper" / "results.csv").exists()


def test_toy_quality_prints_bars_and_verdict(tmp_path, capsys):
    done = _run(tmp_path, "toy_quality", "toy_quality.n_vae=2", "toy_quality.n_blur=1", "toy_quality.n_t2i=2", "toy_quality.n_inpaint=1",
                "toy_quality.n_4x=1", "toy_quality.steps=2")
    printed = capsys.readouterr().out
    assert "vae_psnr_db" in printed and "overall: " in printed
    bars = json.loads((tmp_path / "quality.json").read_text())["bars"]
    assert {b["bar"] for b in bars} >= {"vae_psnr_db", "t2i_colour_acc", "inpaint_success", "inpaint_shape_acc",
                                       "clip_top1", "sr_gain_db"}
    # random weights cannot pass the bars; no reranker / SR weights: those bars are missing and FAIL
    assert done["summary"]["overall"] == "FAIL"
    assert next(b for b in bars if b["bar"] == "clip_top1")["result"] == "FAIL"


def test_toy_quality_update_card_only_for_the_shipped_weights(tmp_path):
    """update_card rewrites msbd/toy/weights/MODEL_CARD.md: measuring other weights with it is one error line."""
    card = os.path.join(ROOT, "msbd", "toy", "weights", "MODEL_CARD.md")
    before = open(card).read()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "run.py"), "+experiment=toy_quality",
                           "model=random", "toy_quality.update_card=true", f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and "update_card" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert open(card).read() == before


def test_bad_experiment_values_are_one_line_errors():
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        for exp, bad, words in (("eval", "eval.masks=[huge]", "eval.masks"), ("seeds", "seeds.n_seeds=0", "n_seeds"),
                                ("ablation_repaint", "ablation_repaint.repaint_steps=[-1]", "repaint_steps")):
            cfg = compose("config", overrides=[f"+experiment={exp}", bad, "model=random"])
            with pytest.raises(ValueError, match=words):
                run_script.check(cfg)
