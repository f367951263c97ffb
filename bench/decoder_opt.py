"""Decoder optimisation where it matters: region=border against the reference's region=full, side by side.

    python bench/decoder_opt.py                      # 4 held-out toy tasks at 512 px, 20 epochs, both regions + off
    python bench/decoder_opt.py --tasks 0 1 --size 1024 --iterations 100

Every variant edits the same tasks with the same seeds on the embedded toy models, so the diffusion is identical
and only decoder optimisation differs. Per edit it records the analyser's seam and halo (colour and texture), the
PSNR of the masked region against the `full` variant's output, the edit's seconds and the decoder optimisation's
seconds (from the pipeline's time split). Rows are appended to a JSONL file as edits finish, and a rerun skips
the (task, variant) pairs already there, so an interrupted run resumes. The summary prints means per variant and
the time ratio against `full`.
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

from experiments.common import ModelSpec, analyse, load_bundle, toy_case  # noqa: E402
from msbd.config import MSBDConfig, replace  # noqa: E402
from msbd.pipeline import run_msbd  # noqa: E402

# full: the reference (whole stage, iterations x tiles/2 Adam steps, fp32); border: border tiles, <= 200 steps,
# fp32; default: the current defaults (border, <= 200 steps, bf16 autocast, channels_last); border_uncapped:
# border tiles, no cap; off: no decoder optimisation; border_bf16: border under bf16 autocast; full_all_tiles:
# the reference with the background-only tiles optimised too (skip_empty_tiles=false);
# border_100 / border_50: border tiles, <= 100 / 50 steps; levels_1 / levels_2: the defaults with only the
# decoder's 1 / 2 finest levels trained (train_levels), "_lr1e-3" / "_lr3e-3" at that learning rate; lr1e-3: the
# whole decoder at lr 1e-3
VARIANTS = {"full": {"region": "full", "max_steps": 0, "autocast_bf16": False},
            "border": {"region": "border", "max_steps": 200, "autocast_bf16": False},
            "default": {},
            "border_uncapped": {"region": "border", "max_steps": 0, "autocast_bf16": False}, "off": {"enabled": False},
            "border_bf16": {"region": "border", "max_steps": 200, "autocast_bf16": True},
            "full_all_tiles": {"region": "full", "max_steps": 0, "skip_empty_tiles": False, "autocast_bf16": False},
            "border_100": {"region": "border", "max_steps": 100, "autocast_bf16": False},
            "border_50": {"region": "border", "max_steps": 50, "autocast_bf16": False},
            "levels_1": {"train_levels": 1}, "levels_2": {"train_levels": 2},
            "levels_1_lr1e-3": {"train_levels": 1, "lr": 1e-3}, "levels_2_lr1e-3": {"train_levels": 2, "lr": 1e-3},
            "lr1e-3": {"lr": 1e-3}, "levels_1_lr3e-3": {"train_levels": 1, "lr": 3e-3}}


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    diff = a[where].astype(np.float64) - b[where]
    mse = float((diff ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def open_run(args, device: str = "cpu") -> tuple[Path, Path, list[dict], MSBDConfig, object]:
    """Threads, the output folder, its rows file (`rows_<size>px_<iterations>it.jsonl`) and the rows already there,
    the toy world's config with `args.iterations` decoder-optimisation epochs, and the toy models."""
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / f"rows_{args.size}px_{args.iterations}it.jsonl"
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    base = MSBDConfig.for_native_size(128)
    base.decoder_opt.iterations = args.iterations
    bundle = load_bundle(ModelSpec(ckpt="msbd/toy/weights/toy-ldm.safetensors",
                                   upscaler="msbd/toy/weights/toy-sr-x4.safetensors",
                                   reranker="msbd/toy/weights/toy-clip.safetensors"), base, device=device)
    return out, rows_path, rows, base, bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--variants", nargs="+", default=["full", "border", "off"], choices=list(VARIANTS))
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench_decoder_opt"))
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    out, rows_path, rows, base, bundle = open_run(args)
    done = {(r["task"], r["variant"]) for r in rows}
    for task in args.tasks:
        case = toy_case(task, args.size)
        for name in args.variants:
            if (task, name) in done:
                continue
            config = replace(base, decoder_opt=VARIANTS[name])
            t0 = time.perf_counter()
            result = run_msbd(case.image, case.mask.astype(np.float32), case.task.prompt, config, bundle)
            seconds = time.perf_counter() - t0
            np.save(out / f"task{task}_{args.size}_{args.iterations}_{name}.npy", result.image)
            report = analyse(case, result.image)
            row = {"task": task, "variant": name, "size": args.size, "iterations": args.iterations,
                   "seconds": round(seconds, 2),
                   "decoder_opt_s": result.profile.get("decoder_opt", {}).get("seconds", 0.0),
                   **{k: report[k] for k in ("seam", "halo_colour", "halo_texture", "count", "edge_ratio")}}
            with rows_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    summarise(rows_path, out, args)
    return 0


def summarise(rows_path: Path, out: Path, args) -> None:
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    rows = [r for r in rows if r["task"] in args.tasks]
    for r in rows:                                    # PSNR of the masked region against the full version
        full = out / f"task{r['task']}_{args.size}_{args.iterations}_full.npy"
        mine = out / f"task{r['task']}_{args.size}_{args.iterations}_{r['variant']}.npy"
        if full.exists() and mine.exists():
            mask = toy_case(r["task"], args.size).mask
            r["psnr_mask_vs_full"] = psnr(np.load(mine), np.load(full), mask)
    print(f"\n{args.size} px, {args.iterations} epochs, tasks {args.tasks}")
    print("| variant | n | seconds | decoder opt s | seam | halo colour | halo texture | PSNR mask vs full (dB) |")
    print("|---|---|---|---|---|---|---|---|")
    summary = {}
    for name in VARIANTS:
        sel = [r for r in rows if r["variant"] == name]
        if not sel:
            continue
        mean = {k: float(np.mean([r[k] for r in sel if k in r])) if any(k in r for r in sel) else math.nan
                for k in ("seconds", "decoder_opt_s", "seam", "halo_colour", "halo_texture", "psnr_mask_vs_full")}
        summary[name] = mean
        print(f"| {name} | {len(sel)} | {mean['seconds']:.1f} | {mean['decoder_opt_s']:.1f} | {mean['seam']:.3f} | "
              f"{mean['halo_colour']:.2f} | {mean['halo_texture']:.3f} | {mean['psnr_mask_vs_full']:.1f} |")
    if "border" in summary and "border_bf16" in summary:
        print(f"border_bf16 / border: decoder optimisation time x"
              f"{summary['border_bf16']['decoder_opt_s'] / max(summary['border']['decoder_opt_s'], 1e-9):.2f}")
    if "full" in summary and "border" in summary:
        ratio = summary["border"]["decoder_opt_s"] / max(summary["full"]["decoder_opt_s"], 1e-9)
        edit_ratio = summary["border"]["seconds"] / max(summary["full"]["seconds"], 1e-9)
        print(f"\nborder / full: decoder optimisation time x{ratio:.2f}, whole edit x{edit_ratio:.2f}")
    (out / f"summary_{args.size}px_{args.iterations}it.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    sys.exit(main())
