"""Decoder optimisation settings compared on the same stage: the final stage's input captured once per task.

    python bench/decoder_opt_isolated.py                           # 6 held-out toy tasks at 1024 px
    python bench/decoder_opt_isolated.py --tasks 0 1 --variants default lr1e-3 --threads 1

`bench/decoder_opt.py` runs whole edits per variant, and since decoder optimisation runs after every stage, a
variant changes the next stage's input: counts and halos then differ for reasons that are not the decoder. Here
each task is edited once with the defaults while the last stage's decoder-optimisation inputs (the stage output,
the sharp reference, the mask) are captured to disk; every variant then optimises the decoder on those same
inputs. The result is composited inside the mask over the reference, as paste-back does, and measured in the crop
with the analyser's seam and halo (the ring widths of the full image). PSNR of the masked region is against the
`full` variant (the reference's setting). Rows are appended to a JSONL file and a rerun skips finished
(task, variant) pairs; captured inputs are reused.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from decoder_opt import open_run  # noqa: E402  (bench/, the script's own folder)
from experiments.common import toy_case  # noqa: E402
from msbd.config import DecoderOptConfig, MSBDConfig  # noqa: E402
import msbd.pipeline as pipeline  # noqa: E402
from msbd.decoder_opt import decoder_optimization  # noqa: E402
from msbd.toy.analyser import COLOURS, AnalyserConfig, colour_classes, halo, seam_strength  # noqa: E402

# full: the reference (every masked tile trained, iterations x tiles/2 Adam steps, fp32, lr 1e-4); default: this
# code's defaults; the others change the learning rate, the trained levels (train_levels) or the step cap
VARIANTS = {
    "full": {"region": "full", "max_steps": 0, "autocast_bf16": False},
    "default": {},
    "lr3e-4": {"lr": 3e-4},
    "lr1e-3": {"lr": 1e-3},
    "levels_1": {"train_levels": 1},
    "levels_1_lr1e-3": {"train_levels": 1, "lr": 1e-3},
    "levels_1_lr3e-3": {"train_levels": 1, "lr": 3e-3},
    "levels_2_lr1e-3": {"train_levels": 2, "lr": 1e-3},
    "lr1e-3_100": {"lr": 1e-3, "max_steps": 100},
    "levels_1_lr1e-3_100": {"train_levels": 1, "lr": 1e-3, "max_steps": 100},
    "lr2e-4_100": {"lr": 2e-4, "max_steps": 100},
    "lr3e-4_100": {"lr": 3e-4, "max_steps": 100},
    "default_100": {"max_steps": 100},
    "off": {"enabled": False},
}


def capture(task: int, size: int, base: MSBDConfig, bundle, path: Path) -> dict:
    """Edit the task with the defaults and keep the last decoder_optimization call's inputs."""
    calls = []
    real = pipeline.decoder_optimization

    def spy(bundle_, sample, ref, mask_px, config, max_edgelen, **kw):
        calls.append({"sample": sample.detach().cpu(), "ref": ref.detach().cpu(), "mask": mask_px.detach().cpu(),
                      "max_edgelen": max_edgelen})
        return real(bundle_, sample, ref, mask_px, config, max_edgelen, **kw)

    case = toy_case(task, size)
    pipeline.decoder_optimization = spy
    try:
        pipeline.run_msbd(case.image, case.mask.astype(np.float32), case.task.prompt, base, bundle)
    finally:
        pipeline.decoder_optimization = real
    captured = {**calls[-1], "colour": COLOURS.index(case.task.obj.colour), "short": min(case.image.shape[:2])}
    torch.save(captured, path)
    return captured


def capture_path(out: Path, task: int, args) -> Path:
    return out / f"capture_task{task}_{args.size}_{args.iterations}it.pt"


def to_u8(x: torch.Tensor) -> np.ndarray:
    return (x[0].float().cpu().permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def measure(image: torch.Tensor, cap: dict) -> tuple[dict, np.ndarray]:
    """Seam and halo of the stage image composited inside the mask over the reference (crop coordinates)."""
    mask = cap["mask"][0, 0].numpy() > 0.5
    ref = to_u8(cap["ref"])
    out = np.where(mask[..., None], to_u8(image), ref)
    cfg = AnalyserConfig()
    band = max(2.0, cfg.seam_band_frac * cap["short"])
    exclude = colour_classes(out, cfg.chroma_min) == cap["colour"]
    colour, texture = halo(out, ref, mask, max(2.0, cfg.halo_ring_frac * cap["short"]), exclude)
    return {"seam": seam_strength(out, ref, mask, band), "halo_colour": colour, "halo_texture": texture}, out


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    mse = float(((a[where].astype(np.float64) - b[where]) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--iterations", type=int, default=20, help="decoder_opt.iterations (the demo's 20)")
    parser.add_argument("--variants", nargs="+", default=["full", "default", "lr1e-3", "levels_1_lr1e-3"],
                        choices=list(VARIANTS))
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench_decoder_opt_isolated"))
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device of the models (cpu, cuda)")
    args = parser.parse_args(argv)
    out, rows_path, rows, base, bundle = open_run(args, device=args.device)
    done = {(r["task"], r["variant"]) for r in rows}
    for task in args.tasks:
        cap_path = capture_path(out, task, args)                  # the earlier stages' iterations shape its input
        cap = torch.load(cap_path) if cap_path.exists() else capture(task, args.size, base, bundle, cap_path)
        inputs = {k: cap[k].to(bundle.device) for k in ("sample", "ref", "mask")}
        for name in args.variants:
            if (task, name) in done:
                continue
            config = DecoderOptConfig(**{**base.decoder_opt.__dict__, **VARIANTS[name]})
            t0 = time.perf_counter()
            if config.enabled:
                res = decoder_optimization(bundle, inputs["sample"], inputs["ref"], inputs["mask"], config,
                                           cap["max_edgelen"])
                image, loss = res.image, res.loss_after
            else:
                image, loss = inputs["sample"], math.nan
            if bundle.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            measures, composite = measure(image, cap)
            np.save(out / f"task{task}_{args.size}_{args.iterations}_{name}.npy", composite)
            row = {"task": task, "variant": name, "size": args.size, "iterations": args.iterations,
                   "seconds": round(seconds, 2), "loss_after": loss, **measures}
            with rows_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
            print(json.dumps(row), flush=True)
    summarise(rows, out, args)
    return 0


def summarise(rows: list[dict], out: Path, args) -> None:
    rows = [r for r in rows if r["task"] in args.tasks]
    for r in rows:
        full = out / f"task{r['task']}_{args.size}_{args.iterations}_full.npy"
        mine = out / f"task{r['task']}_{args.size}_{args.iterations}_{r['variant']}.npy"
        cap = capture_path(out, r["task"], args)
        if full.exists() and mine.exists() and cap.exists():
            mask = torch.load(cap)["mask"][0, 0].numpy() > 0.5
            r["psnr_mask_vs_full"] = psnr(np.load(mine), np.load(full), mask)
    tasks = sorted({r["task"] for r in rows})
    print(f"\n{args.size} px, {args.iterations} epochs, the last stage's decoder optimisation, tasks {tasks}")
    print("| variant | n | seconds | seam | halo colour | halo texture | PSNR mask vs full (dB) |")
    print("|---|---|---|---|---|---|---|")
    for name in VARIANTS:
        sel = [r for r in rows if r["variant"] == name]
        if not sel:
            continue
        mean = {k: float(np.mean([r[k] for r in sel if k in r])) if any(k in r for r in sel) else math.nan
                for k in ("seconds", "seam", "halo_colour", "halo_texture", "psnr_mask_vs_full")}
        print(f"| {name} | {len(sel)} | {mean['seconds']:.1f} | {mean['seam']:.3f} | {mean['halo_colour']:.2f} | "
              f"{mean['halo_texture']:.3f} | {mean['psnr_mask_vs_full']:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
