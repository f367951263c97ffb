"""GPU benchmark (issue 17 item 6): one command, one JSON, under 8 minutes on one GPU.

    python bench/gpu.py --out gpu_bench.json [--device cuda] [--budget-s 450]
    python bench/gpu.py --out /tmp/bench.json --device cpu --tiny      # the same code paths at toy sizes, seconds
    python -m msbd.devcheck bench/gpu.py --out /tmp/bench.json --device cuda --tiny   # placement, emulated (~3 min)

Parts, each written into the JSON as soon as it is measured (a run cut short keeps what it has):
1. `unet_step`: one SD-v1 UNet call, batch 2 (the CFG pair) of 4x64x64 latents and a 77x768 context: ours against
   diffusers' UNet2DConditionModel holding the same random weights (diffusers' initialisation, mapped by
   `ldm.convert.unet_from_diffusers`), float16 and bfloat16, contiguous and channels_last. Median milliseconds of
   timed calls after warm-up (CUDA events on a GPU), achieved TFLOP/s, and the largest output difference relative
   to the largest output.
2. `grid_batch`: the grid stage of an SD-v1-sized edit (a 1408 px crop: 2 x 2 tiles of 768 px, straight to the
   grid) with the tiles one by one (`grid.batch=1`) and batched (`grid.batch=0`, chosen by free memory): seconds,
   and how much the outputs differ. Skipped, with a note, where `GridConfig` has no `batch`.
3. `edits`: whole edits with SD-v1-sized random weights in float16 on square images of 1, 4 and 16 MP with a centred
   square mask of half the side (crops of 640, 1280 and 2496 px), upscale.mode=bicubic, decoder optimisation on,
   reduced steps (first stage 20 steps x 2 candidates, RePaint r=1; upscaling schedule 40 steps; 5 decoder
   iterations): synchronised seconds per stage (and the pipeline's own split by kind of work: UNet, VAE, decoder
   optimisation, ...), peak memory (`torch.cuda.max_memory_allocated`, less the weights resident before the edit)
   against `msbd.cli_edit.estimate_memory`. An edit predicted to overrun `--budget-s` is skipped with a note.
On the CPU (`--device cpu`, for the tests) peak memory is the process's peak RSS; `--tiny` uses the tiny-test
networks, 8x8 latents and 64 / 128 / 256 px images.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))           # experiments/ is not an installed package

from ldm.config import get_preset  # noqa: E402
from ldm.convert.unet import unet_from_diffusers  # noqa: E402
from ldm.models.unet import UNetConfig, UNetModel  # noqa: E402
from msbd.config import GridConfig, MSBDConfig, replace  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclasses.dataclass
class Sizes:
    """What one run measures: SD-v1 on a GPU, or the tiny-test networks (--tiny)."""

    preset: str                     # ldm.config preset of the networks
    latent: int                     # UNet step: latent side
    sides: tuple[int, ...]          # edits: image sides in pixels
    grid_side: int                  # grid_batch: image side (crop = side / 2 x 1.2, rounded up to 64)
    repeats: int                    # UNet step: timed calls per variant
    warmup: int = 3                 # UNet step: untimed calls before them
    first_steps: int = 20
    upscale_steps: int = 40
    decoder_iters: int = 5


SD = Sizes("sd-v1", 64, (1024, 2048, 4096), 2304, 20)
TINY = Sizes("tiny-test", 8, (64, 128, 256), 128, 1, warmup=1, first_steps=2, upscale_steps=10, decoder_iters=1)


# Timing and memory -----------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 3) -> list[float]:
    """Seconds of each of `repeats` calls after `warmup` untimed ones (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def reset_peak(device: torch.device) -> int:
    """Reset the peak counter; returns the bytes allocated now (the weights and anything else resident)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    from experiments.common import reset_peak_rss            # the CPU: the process's peak RSS (a check only)
    reset_peak_rss()
    return 0


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    from experiments.common import peak_rss_gb
    return int(peak_rss_gb() * 2**30)


# 1. UNet step ----------------------------------------------------------------------------------------------------


def diffusers_unet(config: UNetConfig):
    """diffusers' UNet2DConditionModel shaped as our UNetConfig (random weights, diffusers' initialisation)."""
    from diffusers import UNet2DConditionModel
    from ldm.convert.unet import diffusers_unet_kwargs
    return UNet2DConditionModel(**diffusers_unet_kwargs(config)).eval()


def unet_flops(config: UNetConfig, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> int | None:
    """FLOPs of one forward of our UNet, counted on meta tensors (None where meta tensors fail: under
    msbd.devcheck's emulated device)."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        model = UNetModel(config)
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.inference_mode():
            model(x.to("meta"), t.to("meta"), context.to("meta"))
    except RuntimeError:
        return None
    return counter.get_total_flops()


@torch.inference_mode()
def time_unet_pair(ref, ours, inputs: tuple[torch.Tensor, ...], device: torch.device, sizes: Sizes) -> dict:
    """Median ms of diffusers' and our UNet on the same inputs, and their largest difference over the largest eps."""
    x, t, context = inputs
    run_ref = lambda: ref(x, t, encoder_hidden_states=context).sample  # noqa: E731
    run_ours = lambda: ours(x, t, context)                              # noqa: E731
    out_ref, out_ours = run_ref().float(), run_ours().float()
    rel = ((out_ours - out_ref).abs().max() / out_ref.abs().max()).item()
    t_ref = statistics.median(time_calls(run_ref, device, sizes.repeats, sizes.warmup))
    t_ours = statistics.median(time_calls(run_ours, device, sizes.repeats, sizes.warmup))
    return {"ours_ms": 1000 * t_ours, "diffusers_ms": 1000 * t_ref, "ours_over_diffusers": t_ours / t_ref,
            "max_rel_diff": rel, "finite": bool(torch.isfinite(out_ours).all())}


def bench_unet_step(sizes: Sizes, device: torch.device, seed: int) -> dict:
    """Ours vs diffusers, same weights, per dtype and memory format: median ms, TFLOP/s, relative difference."""
    config = get_preset(sizes.preset).unet
    torch.manual_seed(seed)
    ref32 = diffusers_unet(config)
    with torch.device("meta"):
        ours32 = UNetModel(config)
    ours32.load_state_dict(unet_from_diffusers(ref32.state_dict(), config), strict=True, assign=True)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, config.in_channels, sizes.latent, sizes.latent, generator=gen)
    t = torch.tensor([981, 500])
    context = torch.randn(2, 77, config.context_dim, generator=gen)
    flops = unet_flops(config, x, t, context)
    rows = []
    for name, dtype in DTYPES.items():
        ref, ours = (copy.deepcopy(m).to(device, dtype) for m in (ref32, ours32.eval()))
        for channels_last in (False, True):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            ref, ours = ref.to(memory_format=fmt), ours.to(memory_format=fmt)
            inputs = (x.to(device, dtype).contiguous(memory_format=fmt), t.to(device), context.to(device, dtype))
            row = {"dtype": name, "channels_last": channels_last, **time_unet_pair(ref, ours, inputs, device, sizes)}
            if flops:
                row.update(ours_tflops=flops / row["ours_ms"] / 1e9, diffusers_tflops=flops / row["diffusers_ms"] / 1e9)
            rows.append(row)
            print(f"unet_step {name} channels_last={channels_last}: ours {row['ours_ms']:.2f} ms, "
                  f"diffusers {row['diffusers_ms']:.2f} ms, max rel diff {row['max_rel_diff']:.1e}", flush=True)
    return {"preset": sizes.preset, "batch": 2, "latent": [sizes.latent, sizes.latent],
            "context": [77, config.context_dim], "timesteps": t.tolist(),
            "gflop_per_call": flops / 1e9 if flops else None, "timed_calls": sizes.repeats, "rows": rows}


# 2-3. Whole edits ------------------------------------------------------------------------------------------------


def scene(side: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth colour image with noise ([side, side, 3] uint8) and a centred square mask of half the side."""
    rng = np.random.default_rng(side)
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    yy, xx = ramp[:, None], ramp[None, :]
    base = np.stack([yy + 0 * xx, xx + 0 * yy, 1 - (yy + xx) / 2], axis=-1) * 200 + 30
    image = np.clip(base + rng.normal(0, 8, base.shape).astype(np.float32), 0, 255).astype(np.uint8)
    mask = np.zeros((side, side), np.float32)
    mask[side // 4:3 * side // 4, side // 4:3 * side // 4] = 1
    return image, mask


def edit_config(sizes: Sizes, native: int, **changes: dict[str, Any]) -> MSBDConfig:
    """The model's default geometry, bicubic SR, decoder optimisation on, reduced steps; `changes` update sections."""
    sections: dict[str, dict[str, Any]] = {
        "upscale": {"mode": "bicubic", "steps": sizes.upscale_steps},
        "first_stage": {"steps": sizes.first_steps, "batch": 2, "repaint_steps": 1},
        "decoder_opt": {"enabled": True, "iterations": sizes.decoder_iters}}
    for name, values in changes.items():
        sections[name] = {**sections.get(name, {}), **values}
    return replace(MSBDConfig.for_native_size(native), **sections)


def timed_edit(bundle, config: MSBDConfig, side: int, device: torch.device) -> tuple[dict, Any]:
    """One edit: synchronised seconds per stage, peak memory over the resident bytes, the estimator's figures."""
    from msbd.cli_edit import estimate_memory
    from msbd.crop import plan_crop
    from msbd.pipeline import _ceil64, run_msbd
    image, mask = scene(side)
    plan = plan_crop(torch.from_numpy(mask), config.margin, _ceil64(config.first_stage.size),
                     config.reference_quirks.crop_rule)
    marks: list[tuple[str, float]] = []

    def on_stage(name: str) -> None:
        sync(device)
        marks.append((name, time.perf_counter()))

    resident = reset_peak(device)
    t0 = time.perf_counter()
    result = run_msbd(image, mask, "a corgi sitting on a bench", config, bundle, on_stage)
    sync(device)
    total = time.perf_counter() - t0
    peak = peak_bytes(device)
    marks.append(("end", time.perf_counter()))
    # the pipeline's hook marks stages ("first", "stage1", "paste") and may mark steps inside them ("stage2: tiles
    # 1-4/9", "stage2: decoder optimisation"): seconds per mark, and summed per stage
    detail: dict[str, float] = {}
    for (name, start), (_, end) in zip(marks, marks[1:]):
        detail[name] = detail.get(name, 0.0) + end - start
    stage_seconds: dict[str, float] = {}
    for name, seconds in detail.items():
        stage = name.split(":")[0]
        stage_seconds[stage] = stage_seconds.get(stage, 0.0) + seconds
    row: dict[str, Any] = {"side": side, "megapixels": side * side / 1e6, "crop_long_edge": plan.long_edge,
                           "stages": [s.name for s in result.stages], "stage_seconds": stage_seconds,
                           "step_seconds": detail, "split": getattr(result, "profile", None),  # by kind of work
                           "stage_splits": {s.name: getattr(s, "profile", None) for s in result.stages},
                           "seconds": total, "model_calls": sum(s.model_calls for s in result.stages),
                           "tiles": [[s.tiles_run, s.tiles_total] for s in result.stages],
                           "peak_source": "torch.cuda.max_memory_allocated" if device.type == "cuda"
                           else "process peak RSS (VmHWM)", "resident_bytes": resident, "peak_bytes": peak,
                           "peak_over_resident_bytes": peak - resident,
                           "finite": all(bool(torch.isfinite(s.image).all()) for s in result.stages)}
    try:
        est = estimate_memory(config, bundle, image.shape[:2], plan.long_edge)
        row.update(estimate_bytes=est["peak"], estimate_driver=est["driver"], estimate_parts=est["parts"],
                   estimate_over_measured=est["peak"] / max(1, peak - resident))
    except Exception as err:        # the estimator's signature belongs to msbd.cli_edit: record, do not fail
        row["estimate_error"] = f"{type(err).__name__}: {err}"
    inside = mask >= 0.5
    row["outside_mask_identical"] = bool(np.array_equal(result.image[~inside], image[~inside]))
    return row, result


def bench_grid_batch(bundle, sizes: Sizes, device: torch.device) -> dict:
    """The grid stage with tiles one by one vs batched (grid.batch 1 vs 0), same seed: seconds and differences."""
    if "batch" not in {f.name for f in dataclasses.fields(GridConfig)}:
        return {"skipped": "msbd.config.GridConfig has no `batch` field (issue 17 item 4 not merged yet)"}
    native = bundle.native_size
    rows, images = [], []
    for batch in (1, 0):
        config = edit_config(sizes, native, grid={"batch": batch}, decoder_opt={"enabled": False},
                             upscale={"straight_to_grid": True}, first_stage={"steps": 2, "batch": 1,
                                                                              "repaint_steps": 0})
        row, result = timed_edit(bundle, config, sizes.grid_side, device)
        grid_name = next(name for name in row["stage_seconds"] if name != "first" and name != "paste")
        rows.append({"grid.batch": batch, "grid_stage_seconds": row["stage_seconds"][grid_name],
                     "tiles": row["tiles"][-1], "seconds": row["seconds"], "peak_over_resident_bytes":
                     row["peak_over_resident_bytes"]})
        images.append(result.stages[-1].image.float().cpu())
        print(f"grid_batch grid.batch={batch}: grid stage {rows[-1]['grid_stage_seconds']:.2f} s", flush=True)
    diff = (images[0] - images[1]).abs()
    return {"side": sizes.grid_side, "rows": rows, "grid_output_max_abs_diff": diff.max().item(),
            "grid_output_mean_abs_diff": diff.mean().item(), "grid_output_pixels_over_1_255": int((diff > 1 / 255)
                                                                                                .any(1).sum())}


def bench_edits(bundle, sizes: Sizes, device: torch.device, deadline: float, report: dict, write: Callable) -> None:
    """Edits at each size in order; one predicted (from the last, by masked area) to pass the deadline is skipped."""
    report["edits"], last = [], None
    config = edit_config(sizes, bundle.native_size)
    report["edit_config"] = config.to_dict()
    for side in sizes.sides:
        if last is not None:
            predicted = last["seconds"] * (side / last["side"]) ** 2
            if time.perf_counter() + predicted > deadline:
                report["notes"].append(f"edit at {side} px skipped: predicted {predicted:.0f} s, "
                                       f"{deadline - time.perf_counter():.0f} s left of --budget-s")
                break
        row, _ = timed_edit(bundle, config, side, device)
        report["edits"].append(row)
        last = row
        print(f"edit {side} px ({row['megapixels']:.1f} MP): {row['seconds']:.1f} s, peak "
              f"{row['peak_over_resident_bytes'] / 2**30:.2f} GiB over resident, estimate "
              f"{row.get('estimate_bytes', float('nan')) / 2**30:.2f} GiB", flush=True)
        write()


# Main ------------------------------------------------------------------------------------------------------------


def environment(device: torch.device, args: argparse.Namespace) -> dict:
    env: dict[str, Any] = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
                           "device": str(device), "args": vars(args)}
    if device.type == "cuda":
        try:                                # fails under msbd.devcheck's emulated device (no driver)
            props = torch.cuda.get_device_properties(device)
            env.update(gpu=props.name, gpu_memory_bytes=props.total_memory,
                       capability=list(torch.cuda.get_device_capability(device)), cuda=torch.version.cuda,
                       cudnn=torch.backends.cudnn.version())
        except RuntimeError as err:
            env.update(gpu=None, gpu_error=str(err).splitlines()[0])
    else:
        env.update(gpu=None, cpu_threads=torch.get_num_threads())
    try:
        import diffusers
        env["diffusers"] = diffusers.__version__
    except ImportError:
        env["diffusers"] = None
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                           timeout=10).stdout.strip() or None
    except OSError:
        env["git_commit"] = None
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="path of the JSON written")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny-test networks and sizes (a check, not a measurement)")
    parser.add_argument("--budget-s", type=float, default=450, help="seconds after which no new edit starts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but CUDA is not available here; use --device cpu --tiny")
    sizes = TINY if args.tiny else SD
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": environment(device, args), "notes": []}

    def write() -> None:
        report["seconds_total"] = time.perf_counter() - t_start
        out.write_text(json.dumps(report, indent=1, default=float))

    def part(name: str, fn: Callable[[], Any]) -> Any:
        """Run one part; its seconds go into report["part_seconds"], an exception into report["errors"]."""
        t0 = time.perf_counter()
        try:
            return fn()
        except Exception as err:        # keep the other parts' numbers: the JSON names what failed and why
            traceback.print_exc()
            report["errors"][name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            return None
        finally:
            report["part_seconds"][name] = time.perf_counter() - t0
            write()

    report.update(part_seconds={}, errors={})
    report["unet_step"] = part("unet_step", lambda: bench_unet_step(sizes, device, args.seed))
    from msbd.models import build_bundle
    edit_dtype = torch.float16 if device.type == "cuda" else torch.float32    # CPU: the code paths, not fp16 speed
    report["edit_dtype"] = str(edit_dtype).removeprefix("torch.")
    bundle = part("build_bundle", lambda: build_bundle(sizes.preset, None, dtype=edit_dtype, device=device,
                                                       seed=args.seed))
    if bundle is not None:
        report["grid_batch"] = part("grid_batch", lambda: bench_grid_batch(bundle, sizes, device))
        part("edits", lambda: bench_edits(bundle, sizes, device, deadline, report, write))
    print(f"wrote {out} ({report['seconds_total']:.0f} s)" + (f"; failed: {', '.join(report['errors'])}"
                                                              if report["errors"] else ""))
    sys.exit(1 if report["errors"] else 0)


if __name__ == "__main__":
    main()
