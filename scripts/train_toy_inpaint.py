"""Fine-tune a toy inpainting UNet from a toy UNet (the shipped one by default; msbd/toy/train_inpaint.py),
resumable, on one thread.

    python scripts/train_toy_inpaint.py                 # prepare data, train for --minutes, export
    python scripts/train_toy_inpaint.py --minutes 25    # run again after an interruption: continues from last.pt
    python scripts/train_toy_inpaint.py --base-dir train_runs/toy_v2/export --run-dir train_runs/toy_v2_inpaint
                                                        # on another toy LDM (its folder gets the overlay)

Data (renders, masks, latents, text contexts) is prepared once into RUN_DIR/data.pt; the optimisation checkpoints
RUN_DIR/last.pt every 50 steps with the minutes already spent, so a resumed run stops at the same total budget.
The export holds only the fine-tuned tensors (EMA, fp16) under model.diffusion_model.*, with safetensors metadata
naming the toy LDM file they overlay, so `ldm.checkpoint.load_models` reads it as a complete inpainting model.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ldm.checkpoint import load_models  # noqa: E402
from ldm.checkpoint.formats import OVERLAY_KEY, sha256_file  # noqa: E402
from ldm.config import LDMConfig, with_inpainting  # noqa: E402
from ldm.models.tokenizer import CLIPTokenizer  # noqa: E402
from ldm.models.unet import UNetModel  # noqa: E402
from ldm.sampling.inpaint import inpaint_condition, latent_mask, masked_image  # noqa: E402
from ldm.sampling.schedule import sd_alphas_cumprod  # noqa: E402
from msbd.toy import presets  # noqa: E402
from msbd.toy.data import seed_range  # noqa: E402
from msbd.toy.train_inpaint import (  # noqa: E402
    InpaintTrainConfig, ema_update, inpaint_unet_from, is_trained, lr_factor, loss_fn, make_sample,
)

SEED_OFFSET = 700_000          # training scenes from here on (the toy UNet used 0..16000 and 500000..508000)


def prepare(models, config: LDMConfig, n: int, path: str) -> dict:
    """Render n scenes with masks and captions; encode clean and masked latents; encode the captions."""
    if os.path.isfile(path):
        return torch.load(path)
    t0 = time.time()
    samples = [make_sample(seed, config.image_size) for seed in seed_range("train", n, SEED_OFFSET)]
    images = torch.from_numpy(np.stack([s[0] for s in samples])).permute(0, 3, 1, 2).float() / 255   # [n, 3, H, W]
    masks = torch.from_numpy(np.stack([s[1] for s in samples]))[:, None].float()                     # [n, 1, H, W]
    f = config.vae.downsample_factor
    z0, z_masked = [], []
    with torch.no_grad():
        for i in range(0, n, 64):
            x, m = images[i:i + 64] * 2 - 1, masks[i:i + 64]
            z0.append(models.vae.encode_latent(x, config.scale_factor))
            z_masked.append(models.vae.encode_latent(masked_image(x, m), config.scale_factor))
            print(f"encoded {min(i + 64, n)}/{n} ({time.time() - t0:.0f} s)", flush=True)
        z0, z_masked = torch.cat(z0), torch.cat(z_masked)
        mask_z = latent_mask(masks, (masks.shape[-2] // f, masks.shape[-1] // f))
        captions = sorted({s[2] for s in samples})
        tokenizer = CLIPTokenizer(pad_token_id=config.text.pad_token_id)
        contexts = torch.cat([models.text_encoder(tokenizer(captions[i:i + 256])) for i in range(0, len(captions), 256)])
        empty = models.text_encoder(tokenizer([""]))
    index = {c: i for i, c in enumerate(captions)}
    data = {"z0": z0, "cond": inpaint_condition(mask_z, z_masked), "caption": torch.tensor([index[s[2]] for s in samples]),
            "contexts": contexts, "empty": empty, "kinds": [s[3] for s in samples],
            "prepare_seconds": time.time() - t0}
    torch.save(data, path)
    return data


def train(args, config: LDMConfig, models, data: dict) -> tuple[UNetModel, dict]:
    tc = InpaintTrainConfig(max_minutes=args.minutes, batch_size=args.batch_size)
    unet = UNetModel(with_inpainting(config, True).unet)
    unet.load_state_dict(inpaint_unet_from(models.unet.state_dict()), strict=True)
    params = {k: p for k, p in unet.named_parameters() if args.trained == "all" or is_trained(k)}
    for k, p in unet.named_parameters():
        p.requires_grad_(k in params)
    ema = {k: p.detach().clone() for k, p in params.items()}
    opt = torch.optim.AdamW(params.values(), lr=tc.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(19)
    step, spent, log = 0, 0.0, []
    last = os.path.join(args.run_dir, "last.pt")
    if os.path.isfile(last):
        ckpt = torch.load(last)
        unet.load_state_dict(ckpt["unet"])
        opt.load_state_dict(ckpt["opt"])
        ema, step, spent, log = ckpt["ema"], ckpt["step"], ckpt["spent"], ckpt["log"]
        gen.set_state(ckpt["gen"])
        print(f"resumed at step {step}, {spent / 60:.1f} min spent", flush=True)
    alpha_bar = sd_alphas_cumprod().float()
    n, t_start, losses = len(data["z0"]), time.time() - spent, []
    unet.train()
    while time.time() - t_start < tc.max_minutes * 60:
        idx = torch.randint(0, n, (tc.batch_size,), generator=gen)
        context = data["contexts"][data["caption"][idx]]
        drop = torch.rand(tc.batch_size, generator=gen) < tc.caption_dropout
        context = torch.where(drop[:, None, None], data["empty"].expand_as(context), context)
        for group in opt.param_groups:
            group["lr"] = tc.lr * lr_factor(step, tc.warmup_steps)
        loss = loss_fn(unet, alpha_bar, data["z0"][idx], data["cond"][idx], context, tc.snr_gamma, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, params, step, tc.ema_decay)
        step, losses = step + 1, losses + [loss.item()]
        if step % tc.checkpoint_every == 0:
            spent = time.time() - t_start
            log.append({"step": step, "loss": float(np.mean(losses)), "minutes": round(spent / 60, 2)})
            losses = []
            print(json.dumps(log[-1]), flush=True)
            torch.save({"unet": unet.state_dict(), "opt": opt.state_dict(), "ema": ema, "step": step, "spent": spent,
                        "log": log, "gen": gen.get_state()}, last + ".tmp")
            os.replace(last + ".tmp", last)
    return unet, {"steps": step, "minutes": round((time.time() - t_start) / 60, 1), "log": log, "ema": ema}


def check_run_dir(run_dir: str, mine: dict) -> str:
    """The path of run_dir's base.json (the base and --trained its data.pt and last.pt were made for); exits with one
    error line when they were made for others, or before the record existed."""
    record = os.path.join(run_dir, "base.json")
    if os.path.isfile(record):
        try:
            with open(record) as f:
                theirs = json.load(f)
        except ValueError:
            sys.exit(f"error: {record} is not JSON: use another --run-dir")
        if theirs != mine:
            sys.exit(f"error: --run-dir {run_dir} holds data and a checkpoint of another base or --trained "
                     f"(trained={theirs.get('trained')}): use another --run-dir")
    elif any(os.path.isfile(os.path.join(run_dir, f)) for f in ("data.pt", "last.pt")):
        sys.exit(f"error: --run-dir {run_dir} holds data made before runs recorded their base (base.json): use "
                 f"another --run-dir")
    return record


def export(ema: dict[str, torch.Tensor], path: str, base_name: str) -> None:
    from safetensors.torch import save_file
    tensors = {"model.diffusion_model." + k: v.half().contiguous() for k, v in ema.items()}
    save_file(tensors, path, metadata={OVERLAY_KEY: base_name})
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB, {sum(v.numel() for v in ema.values()):,} parameters)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="training scenes")
    parser.add_argument("--minutes", type=float, default=25.0, help="optimisation budget (summed over resumes)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--run-dir", default=os.path.join(ROOT, "train_runs", "toy_inpaint"))
    parser.add_argument("--base-dir", default=presets.WEIGHTS_DIR,
                        help="folder of the toy LDM to fine-tune (toy-ldm.safetensors, toy-ldm.json)")
    parser.add_argument("--export", help="overlay file (default: BASE_DIR/toy-inpaint-unet.safetensors; it must sit "
                                         "beside the base it names)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trained", choices=["partial", "all"], default="partial",
                        help="partial: TRAINED_PREFIXES only, a small overlay (the shipped one, for the 30 MB budget "
                             "it was made under); all: the whole UNet, as the released inpainting models were made")
    args = parser.parse_args()
    base = os.path.join(args.base_dir, os.path.basename(presets.LDM_WEIGHTS))
    base_config = os.path.join(args.base_dir, os.path.basename(presets.LDM_CONFIG))
    export_path = args.export or os.path.join(args.base_dir, "toy-inpaint-unet.safetensors")
    for path in (base, base_config):
        if not os.path.isfile(path):
            sys.exit(f"error: --base-dir {args.base_dir} has no {os.path.basename(path)}")
    if os.path.abspath(os.path.dirname(export_path)) != os.path.abspath(args.base_dir):
        sys.exit(f"error: --export {export_path} must be in --base-dir {args.base_dir}: the overlay names its base "
                 f"by file name")
    mine = {"base_sha256": sha256_file(base), "trained": args.trained}
    record = check_run_dir(args.run_dir, mine)
    try:
        with open(base_config) as f:
            config = LDMConfig.from_dict(json.load(f))
        models = load_models(base, config)
    except ValueError as err:                      # a bad JSON, a config that does not fit, a CheckpointError
        sys.exit(f"error: --base-dir {args.base_dir}: {str(err).splitlines()[0]}")
    torch.set_num_threads(args.threads)
    os.makedirs(args.run_dir, exist_ok=True)
    with open(record, "w") as f:
        json.dump(mine, f)
    data = prepare(models, config, args.n, os.path.join(args.run_dir, "data.pt"))
    print(f"data: {len(data['z0'])} scenes, kinds {dict(zip(*np.unique(data['kinds'], return_counts=True)))}, "
          f"prepared in {data['prepare_seconds']:.0f} s", flush=True)
    _, result = train(args, config, models, data)
    export(result.pop("ema"), export_path, os.path.basename(base))
    with open(os.path.join(args.run_dir, "result.json"), "w") as f:
        json.dump({**result, "n": args.n, "batch_size": args.batch_size, "threads": args.threads,
                   "prepare_seconds": data["prepare_seconds"]}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
