"""Wall time and peak memory (RSS) of one MSBD edit as the image and the mask grow, for grid.fusion alpha and latent.

A square toy scene (`msbd.toy.scenes.random_scene`) is rendered at each side (default 1024, 2048, 4096, 8192 px =
1, 4, 16, 64 MP) with a centred square mask of half the side (rows and cols [side/4, 3 side/4), a quarter of the
area), and edited with the embedded toy models in the toy geometry (`MSBDConfig.for_native_size(128)`: first stage
128, max_edgelen and tile 192, overlap 32). Every (size, fusion) runs in a fresh child process (this script
re-invoked with `--one`), so its peak RSS (VmHWM, reset after the scene render and the model load) belongs to that
edit alone. The render is timed separately and is not part of "seconds". Nothing is asserted: the script prints a
header (machine, settings), one table with every measurement side by side, a per-stage breakdown, and two summary
lines: whether the largest size stayed under 8 GB, and the log-log slope of time vs masked area per fusion
(1.0 = linear; the fixed-size first stage and stage 1 pull the total below 1 at small sizes, so the slope of the
grid stage alone is printed as well).

Defaults are a reduced but honest schedule: first stage 20 DDIM steps, batch 1 (no CLIP reranking: one candidate,
reranking costs one CLIP call and does not grow with the image), RePaint r=0, upscaling stages 40 steps (so 16 run at
strength 0.4 and 10 per tile at grid strength 0.25), ESRGAN-layout toy SR, decoder optimisation on with 5 iterations.
`--paper-steps` uses the paper's 50 / 100 / r=5, `--decoder-iters` changes the decoder iterations.
Without the trained toy weights (msbd/toy/weights) the script says so and uses random weights of the same
architecture (timing and memory do not depend on weight values); `--random-weights` forces that.

A failed child (Python error, out of memory, killed, timed out) gives a row marked failed with its last error line.
`--max-gb` caps each child's address space (RLIMIT_AS, default 16 GiB) so that an edit that outgrows the machine
fails with an allocation error instead of waking the kernel's OOM killer next to other jobs; 0 removes the cap.

    .venv/bin/python bench/scaling.py [--sizes 1024 2048 4096 8192] [--fusions alpha latent] [--quick]
        [--threads N] [--paper-steps] [--decoder-iters 5] [--random-weights] [--timeout S] [--jsonl PATH]

The full default run takes hours on 2 cores (the 8192 px edits dominate); `--quick` runs 1024 and 2048 only.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))           # experiments/ is not an installed package

RESULT_TAG = "SCALING_RESULT "            # child -> parent: one JSON line with the measurement
STAGE_TAG = "SCALING_STAGE "              # child -> parent: the stage the edit is entering (progress, failures)
PROMPT = "a red star"
MEMORY_GOAL_GB = 8.0
DEFAULT_SIZES = (1024, 2048, 4096, 8192)
QUICK_SIZES = (1024, 2048)


# ------------------------------------------------------------------------------------------------------------
# Settings (shared by parent and child)


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    paper = args.paper_steps
    return {
        "first_steps": args.first_steps or (50 if paper else 20),
        "upscale_steps": args.upscale_steps or (100 if paper else 40),
        "repaint": (5 if paper else 0) if args.repaint is None else args.repaint,
        "batch": 1,                                    # one candidate, no reranking (see the module docstring)
        "decoder_opt": args.decoder_iters > 0,
        "decoder_iters": args.decoder_iters,
        "upscale_mode": "esrgan",
        "seed": args.seed,
        "scene_seed": args.scene_seed,
        "threads": args.threads,
        "random_weights": args.random_weights,
        "max_gb": args.max_gb,
    }


def build_config(settings: dict[str, Any], fusion: str):
    from msbd.config import MSBDConfig
    return MSBDConfig.for_native_size(
        128,
        first_stage={"batch": settings["batch"], "steps": settings["first_steps"],
                     "repaint_steps": settings["repaint"], "rerank": False},
        upscale={"steps": settings["upscale_steps"], "mode": settings["upscale_mode"]},
        grid={"fusion": fusion, "skip_empty_tiles": True},
        decoder_opt={"enabled": settings["decoder_opt"], "iterations": settings["decoder_iters"]},
        seed=settings["seed"],
    )


def toy_weights_missing() -> list[str]:
    """The toy-world files a trained bundle needs that are not there (empty: trained weights are usable)."""
    from msbd.toy import presets
    files = (presets.LDM_WEIGHTS, presets.LDM_CONFIG, presets.SR_WEIGHTS, presets.CLIP_WEIGHTS)   # CLIP: the text encoder
    return [os.path.relpath(f, REPO) for f in files if not os.path.isfile(f)]


def load_models(settings: dict[str, Any], config):
    """(bundle, "toy" | "random"): the trained toy models if present (and not --random-weights), else random ones."""
    if not settings["random_weights"] and not toy_weights_missing():
        from experiments.common import ModelSpec, load_bundle
        from msbd.toy import presets
        spec = ModelSpec(name="toy", ldm_config="toy", ckpt=presets.LDM_WEIGHTS, upscaler=presets.SR_WEIGHTS,
                         reranker=None)
        return load_bundle(spec, config), "toy"
    from experiments.common import random_upscaler
    from msbd.models import build_bundle
    from msbd.toy.presets import toy_ldm_config
    bundle = build_bundle(toy_ldm_config(0.2), None, seed=0)
    bundle.upscaler = random_upscaler(0)
    return bundle, "random"


# ------------------------------------------------------------------------------------------------------------
# Child: one edit


def _status_gb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _emit(tag: str, payload: Any) -> None:
    sys.stdout.write(tag + (payload if isinstance(payload, str) else json.dumps(payload)) + "\n")
    sys.stdout.flush()


def _warm_up(bundle) -> None:
    """One tiny call of every network, so one-off initialisation (oneDNN set-up, lazy buffers) is not timed."""
    import torch
    with torch.no_grad():
        z = bundle.encode(torch.zeros(1, 3, 64, 64))
        bundle.decode(z)
        context = bundle.encode_text([PROMPT])
        bundle.unet(z.to(bundle.dtype), torch.tensor([500]), context.to(bundle.dtype))
        if bundle.upscaler is not None:
            from msbd.upscale import esrgan_x4
            esrgan_x4(torch.zeros(1, 3, 16, 16), bundle.upscaler)


def measure_one(job: dict[str, Any]) -> dict[str, Any]:
    """Render the scene, load the models, run one edit; every reading of the row (see `main` for the columns)."""
    settings, side, fusion = job["settings"], job["side"], job["fusion"]
    if settings["max_gb"] > 0:
        cap = int(settings["max_gb"] * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import numpy as np
    import torch
    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    from experiments.common import peak_rss_gb, reset_peak_rss
    from msbd.pipeline import run_msbd
    from msbd.toy.scenes import random_scene, render

    row: dict[str, Any] = {"side": side, "fusion": fusion, "torch_threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    image = np.asarray(render(random_scene(settings["scene_seed"]), side))          # [side, side, 3] uint8
    row["render_s"] = time.perf_counter() - t0
    mask = np.zeros((side, side), dtype=bool)
    mask[side // 4:3 * side // 4, side // 4:3 * side // 4] = True                   # a quarter of the area
    row["mask_px"] = int(mask.sum())
    config = build_config(settings, fusion)
    t0 = time.perf_counter()
    bundle, weights = load_models(settings, config)
    _warm_up(bundle)
    row["load_s"], row["weights"] = time.perf_counter() - t0, weights
    row["base_gb"] = _status_gb("VmRSS")                                            # models + scene + mask
    reset_peak_rss()
    t0 = time.perf_counter()
    result = run_msbd(image, mask, PROMPT, config, bundle, on_stage=lambda name: _emit(STAGE_TAG, name))
    row["seconds"] = time.perf_counter() - t0
    row["peak_gb"] = peak_rss_gb()
    row["vm_peak_gb"] = _status_gb("VmPeak")
    row["crop"] = [result.plan.diff_h, result.plan.diff_w]
    row["stages"] = [{"name": s.name, "seconds": s.seconds, "calls": s.model_calls, "tiles_run": s.tiles_run,
                      "tiles_total": s.tiles_total, "hw": list(s.image.shape[-2:])} for s in result.stages]
    row["paste_s"] = result.timings["total"] - result.timings["total_before_paste"]
    changed = np.any(result.image != image, axis=-1)
    row["changed_outside_mask"] = int((changed & ~mask).sum())                     # must be 0 (paste-back)
    return row


def child_main(job_json: str) -> int:
    job = json.loads(job_json)
    try:
        row = measure_one(job)
    except BaseException as err:                                                    # MemoryError, RuntimeError...
        import traceback
        traceback.print_exc()
        lines = str(err).strip().splitlines() or [""]
        _emit(RESULT_TAG, {"side": job["side"], "fusion": job["fusion"],
                           "error": f"{type(err).__name__}: {lines[-1]}"[:300]})
        return 1
    _emit(RESULT_TAG, row)
    return 0


# ------------------------------------------------------------------------------------------------------------
# Parent: run the children, print the table


def run_child(job: dict[str, Any], timeout: float | None, label: str) -> dict[str, Any]:
    env = dict(os.environ)
    threads = job["settings"]["threads"]
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with tempfile.TemporaryFile(mode="w+") as err_file:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--one", json.dumps(job)],
                                stdout=subprocess.PIPE, stderr=err_file, text=True, env=env, cwd=REPO)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer:
            timer.start()
        row, stage, t0 = None, "start", time.perf_counter()
        for line in proc.stdout:                                                    # progress as it happens
            if line.startswith(STAGE_TAG):
                stage = line[len(STAGE_TAG):].strip()
                print(f"  {label}: {stage} (+{time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
            elif line.startswith(RESULT_TAG):
                row = json.loads(line[len(RESULT_TAG):])
        code = proc.wait()
        if timer:
            timer.cancel()
        err_file.seek(0)
        err_lines = [ln for ln in err_file.read().splitlines() if ln.strip()]
    if row is None:
        if timed_out.is_set():
            error = f"timed out after {timeout:.0f} s"
        elif code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            error = f"killed by {name}" + (" (out of memory? the OOM killer sends SIGKILL)" if -code == 9 else "")
        else:
            error = (err_lines[-1] if err_lines else f"exit code {code}")[:300]
        row = {"side": job["side"], "fusion": job["fusion"], "error": error}
    if "error" in row:
        row["failed_stage"] = stage
    return row


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _grid(row: dict) -> dict:
    stages = [s for s in row.get("stages", []) if "(grid)" in s["name"]]
    return {"seconds": sum(s["seconds"] for s in stages) if stages else None,
            "run": sum(s["tiles_run"] for s in stages), "total": sum(s["tiles_total"] for s in stages)}


def fit_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) against log(x); None with fewer than two distinct points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y and y > 0]
    if len({p[0] for p in pts}) < 2:
        return None
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def print_table(rows: list[dict]) -> None:
    cols = [("MP", 6), ("mask MP", 8), ("crop px", 11), ("fusion", 6), ("render s", 8), ("seconds", 9),
            ("grid s", 8), ("peak GB", 7), ("base GB", 7), ("tiles run/total", 15), ("UNet calls", 10),
            ("s/mask MP", 9), ("t/t0", 6), ("A/A0", 6)]
    print("  ".join(f"{name:>{width}}" for name, width in cols))
    smallest: dict[str, dict] = {}
    for row in rows:
        mp, mask_mp = row["side"] ** 2 / 1e6, (row["side"] // 2) ** 2 / 1e6
        head = [f"{mp:6.2f}", f"{mask_mp:8.3f}"]
        if "error" in row:
            print("  ".join(head + [f"{'-':>11}", f"{row['fusion']:>6}"]) +
                  f"  FAILED in {row.get('failed_stage', '?')}: {row['error']}")
            continue
        base = smallest.setdefault(row["fusion"], row)
        grid = _grid(row)
        calls = sum(s["calls"] for s in row["stages"])
        tiles = f"{grid['run']}/{grid['total']}" if grid["total"] else "- (no grid)"
        cells = head + [
            f"{row['crop'][0]}x{row['crop'][1]}".rjust(11), f"{row['fusion']:>6}", f"{row['render_s']:8.1f}",
            f"{row['seconds']:9.1f}", f"{_cell(grid['seconds'], '8.1f'):>8}", f"{row['peak_gb']:7.2f}",
            f"{row['base_gb']:7.2f}", f"{tiles:>15}", f"{calls:10d}", f"{row['seconds'] / mask_mp:9.1f}",
            f"{row['seconds'] / base['seconds']:6.2f}", f"{mask_mp / ((base['side'] // 2) ** 2 / 1e6):6.2f}"]
        print("  ".join(cells))


def print_breakdown(rows: list[dict]) -> None:
    print("\nper stage (seconds / UNet calls / output px; 'paste' = paste-back):")
    for row in rows:
        if "error" in row:
            continue
        parts = [f"{s['name']} {s['seconds']:.1f}s/{s['calls']}/{s['hw'][0]}x{s['hw'][1]}" for s in row["stages"]]
        parts.append(f"paste {row['paste_s']:.1f}s")
        extra = f"  [VmPeak {row['vm_peak_gb']:.1f} GB]" if row.get("vm_peak_gb") else ""
        bad = (f"  [!! {row['changed_outside_mask']} px changed outside the mask]"
               if row.get("changed_outside_mask") else "")
        print(f"  {row['side']:>5} {row['fusion']:>6}: " + ", ".join(parts) + extra + bad)


def print_summary(rows: list[dict], sizes: list[int], fusions: list[str]) -> None:
    largest = max(sizes)
    parts = []
    for fusion in fusions:
        row = next((r for r in rows if r["side"] == largest and r["fusion"] == fusion), None)
        if row is None or "error" in row:
            parts.append(f"{fusion} FAILED ({row['error'] if row else 'not run'})")
        else:
            verdict = "under" if row["peak_gb"] < MEMORY_GOAL_GB else "OVER"
            parts.append(f"{fusion} {row['peak_gb']:.2f} GB ({verdict} {MEMORY_GOAL_GB:.0f} GB)")
    print(f"\n(1) memory at the largest size, {largest}x{largest} px ({largest ** 2 / 1e6:.1f} MP): " + "; ".join(parts))
    parts = []
    for fusion in fusions:
        ok = [r for r in rows if r["fusion"] == fusion and "error" not in r]
        area = [(r["side"] // 2) ** 2 / 1e6 for r in ok]
        total = fit_slope(area, [r["seconds"] for r in ok])
        grid_rows = [(a, _grid(r)["seconds"]) for a, r in zip(area, ok) if _grid(r)["seconds"]]
        grid = fit_slope([a for a, _ in grid_rows], [s for _, s in grid_rows])
        sides = ",".join(str(r["side"]) for r in ok)
        na = "n/a (needs two sizes)"
        parts.append(f"{fusion} {na if total is None else f'{total:.2f}'} (grid stage alone "
                     f"{na if grid is None else f'{grid:.2f}'}) over sides [{sides}]")
    print("(2) log-log slope of edit seconds vs masked area (1.0 = linear): " + "; ".join(parts))


def print_header(args: argparse.Namespace, settings: dict[str, Any], sizes: list[int]) -> None:
    import torch
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        mem_gb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError):
        mem_gb = float("nan")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    threads = settings["threads"] or torch.get_num_threads()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores ({affinity} usable), "
          f"{mem_gb:.1f} GiB RAM, load average {load}; python {platform.python_version()}, torch {torch.__version__}, "
          f"{threads} torch threads per child{'' if settings['threads'] else ' (torch default)'}")
    missing = toy_weights_missing()
    if settings["random_weights"]:
        print("models: random weights of the toy architecture (--random-weights): toy_ldm_config(0.2) + untrained "
              "toy RRDBNet; timing and memory do not depend on weight values")
    elif missing:
        print(f"models: NOTE the toy weights are not there ({', '.join(missing)}; not trained yet?), so random "
              "weights of the same architecture are used: toy_ldm_config(0.2) + untrained toy RRDBNet "
              "(timing and memory do not depend on weight values)")
    else:
        print("models: the trained toy models from msbd/toy/weights (LDM + x4 SR; no CLIP: batch 1, no reranking)")
    config = build_config(settings, "alpha")
    fs, up, grid, dec = config.first_stage, config.upscale, config.grid, config.decoder_opt
    steps_kind = "the paper's" if args.paper_steps else "reduced (--paper-steps: 50 / 100 / r=5)"
    print(f"settings: toy geometry (first stage {fs.size}, max_edgelen {up.max_edgelen}, tile {grid.tile}, "
          f"overlap {grid.overlap}, margin {config.margin}); steps {steps_kind}: first stage {fs.steps} DDIM steps, "
          f"batch {fs.batch} (no reranking), RePaint r={fs.repaint_steps}; upscaling stages {up.steps} steps at "
          f"strength {up.strength} / grid {up.grid_strength}, upscale.mode={up.mode}; skip_empty_tiles="
          f"{grid.skip_empty_tiles}; decoder optimisation "
          + (f"on, {dec.iterations} iterations (paper 100; --decoder-iters), tile {dec.tile}" if dec.enabled
             else "off") + f"; seed {config.seed}")
    cap = f"address space capped at {settings['max_gb']:g} GiB per child (--max-gb)" if settings["max_gb"] > 0 \
        else "no address-space cap"
    print(f"scene: random_scene({settings['scene_seed']}) at sides {sizes} px, centred square mask of half the side "
          f"(a quarter of the area), prompt {PROMPT!r}; one fresh process per edit, {cap}")
    print("columns: seconds = the edit (run_msbd), without the scene render (render s) and the model load; "
          "grid s = grid stage(s); peak GB = peak RSS during the edit (VmHWM reset before it), base GB = RSS before it "
          "(models + scene); t/t0 and A/A0 = time and masked-area ratios to the smallest size of the same fusion\n",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="image sides in px (default 1024 2048 "
                        "4096 8192 = 1, 4, 16, 64 MP; multiples of 64)")
    parser.add_argument("--fusions", nargs="+", default=["alpha", "latent"], choices=["alpha", "latent"])
    parser.add_argument("--quick", action="store_true", help="only sides 1024 and 2048")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per child (default: torch's)")
    parser.add_argument("--paper-steps", action="store_true", help="first stage 50 steps, upscale 100, RePaint r=5")
    parser.add_argument("--first-steps", type=int, default=None, help="override the first-stage DDIM steps")
    parser.add_argument("--upscale-steps", type=int, default=None, help="override the upscaling-stage steps")
    parser.add_argument("--repaint", type=int, default=None, help="override the RePaint passes per step")
    parser.add_argument("--decoder-iters", type=int, default=5, help="decoder-optimisation iterations (0 = off)")
    parser.add_argument("--random-weights", action="store_true", help="random toy-architecture weights")
    parser.add_argument("--seed", type=int, default=0, help="MSBD seed")
    parser.add_argument("--scene-seed", type=int, default=0, help="random_scene seed")
    parser.add_argument("--max-gb", type=float, default=16.0, help="RLIMIT_AS per child in GiB (0 = no cap)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before a child is killed")
    parser.add_argument("--jsonl", type=Path, default=None, help="also write every raw row to this file")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)           # internal: run one edit
    args = parser.parse_args()
    if args.one is not None:
        sys.exit(child_main(args.one))
    sizes = args.sizes or list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    bad = [s for s in sizes if s % 64 or s < 256]
    if bad:
        parser.error(f"--sizes must be multiples of 64 and at least 256, got {bad}")
    if args.decoder_iters < 0:
        parser.error("--decoder-iters must be >= 0")
    sizes = sorted(set(sizes))
    settings = settings_from_args(args)
    print_header(args, settings, sizes)
    rows = []
    jobs = [(side, fusion) for side in sizes for fusion in args.fusions]
    for i, (side, fusion) in enumerate(jobs, start=1):
        label = f"[{i}/{len(jobs)}] {side} px {fusion}"
        print(f"{label}: starting", file=sys.stderr, flush=True)
        row = run_child({"side": side, "fusion": fusion, "settings": settings}, args.timeout, label)
        if "error" in row:
            print(f"{label}: FAILED in {row['failed_stage']}: {row['error']}", file=sys.stderr, flush=True)
        else:
            print(f"{label}: {row['seconds']:.1f} s, peak {row['peak_gb']:.2f} GB", file=sys.stderr, flush=True)
        rows.append(row)
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")
    print_table(rows)
    print_breakdown(rows)
    print_summary(rows, sizes, args.fusions)


if __name__ == "__main__":
    main()
