"""bench/train_step.py at its smallest: every variant is timed and the step really trains (the loss falls)."""
import json
import os
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "bench"))

import train_step  # noqa: E402


def test_table_has_every_variant_and_json(tmp_path):
    out_json = tmp_path / "t.json"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "train_step.py"), "--batch", "2",
                           "--repeats", "1", "--threads", "1", "--json", str(out_json)],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "variant" not in line]
    assert [r.split("|")[1].strip() for r in rows] == [*train_step.VARIANTS, "train_toy", "lightning"]
    result = json.loads(out_json.read_text())
    assert result["gflop_per_step"] > 0 and all(v["median_s"] > 0 for v in result["variants"].values())
    bad = subprocess.run([sys.executable, os.path.join(REPO, "bench", "train_step.py"), "--batch", "0"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
    for arch in (["nope=3"], ["unet_channels=48"], ["unet_mult=abc"], ["latent_channels=[8]"], ["unet_attention=5"],
                 ["unet_attention=[3]"], ["unet_mult=[1,1,1,1,1,1]"]):   # unknown; 48 in 32 groups; types; depth
        bad = subprocess.run([sys.executable, os.path.join(REPO, "bench", "train_step.py"), "--arch", *arch],
                             capture_output=True, text=True, cwd=REPO, timeout=120)
        assert bad.returncode == 2 and bad.stderr.startswith("error:") and bad.stderr.count("\n") == 1, bad.stderr


def test_arch_sizes_change_the_model_timed():
    """--arch: the shipped config with train_toy's arch options changed (here 8 latent channels, a 48-wide UNet)."""
    config = train_step.arch_config(["latent_channels=8", "unet_channels=48", "unet_head_channels=24",
                                     "unet_norm_groups=16", "unet_mult=[1,2]"])
    assert config.unet.in_channels == config.unet.out_channels == config.vae.embed_dim == 8
    assert config.unet.model_channels == 48 and config.unet.channel_mult == (1, 2)
    assert train_step.arch_config([]) == train_step.toy_config()


def test_steps_train_the_unet():
    torch.set_num_threads(1)
    batch = train_step.make_batch(4, train_step.toy_config().unet.context_dim)
    for bf16, channels_last in train_step.VARIANTS.values():
        trainer = train_step.Trainer(bf16, channels_last)
        losses = [trainer.step(*batch) for _ in range(6)]
        assert losses[-1] < losses[0]
    module = train_step.ModuleTrainer()                  # train_toy's own step: the module's loss falls too
    ema_before = next(module.module.ema_unet.parameters()).clone()
    ids, losses = train_step.token_ids(4), []
    for _ in range(6):
        torch.manual_seed(1)                             # the same timesteps and noise each step
        losses.append(module.step(batch[0], ids))
    assert losses[-1] < losses[0] and not torch.equal(next(module.module.ema_unet.parameters()), ema_before)
