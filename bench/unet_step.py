"""Time one UNet step of our UNetModel against diffusers' UNet2DConditionModel on the SD-v1 architecture.

Both models get the same random weights (diffusers' initialisation, copied through `unet_from_diffusers`) and
the same inputs: batch 2 (the CFG pair) of 4x64x64 latents, a 77x768 context. For each dtype, one warm-up call
per model, then `--repeats` calls alternating between the two; prints the median seconds, the ratio
ours/diffusers and the achieved GFLOP/s (FLOPs counted once by torch.utils.flop_counter on the meta device).
Runs under torch.inference_mode on the CPU. `--quick` is a smoke check (16x16 latents, one repeat).

    .venv/bin/python bench/unet_step.py [--repeats 3] [--dtypes fp32 bf16] [--channels-last] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from ldm.convert.unet import unet_from_diffusers
from ldm.models.unet import UNetConfig, UNetModel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_models(config: UNetConfig, seed: int) -> tuple[torch.nn.Module, UNetModel]:
    """diffusers' SD-v1 UNet with random weights and ours holding the same weights."""
    torch.manual_seed(seed)
    ref = UNet2DConditionModel(cross_attention_dim=config.context_dim).eval()   # defaults are SD v1 otherwise
    with torch.device("meta"):
        ours = UNetModel(config)
    ours.load_state_dict(unet_from_diffusers(ref.state_dict(), config), strict=True, assign=True)
    return ref, ours.eval()


def count_flops(config: UNetConfig, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> int:
    """FLOPs of one forward of our model (matmuls, convs, attention), counted on meta tensors."""
    with torch.device("meta"):
        model = UNetModel(config)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x.to("meta"), t.to("meta"), context.to("meta"))
    return counter.get_total_flops()


def time_pair(ref, ours, x, t, context, repeats: int) -> tuple[float, float, float]:
    """Median seconds of (diffusers, ours) after one warm-up each, and the max relative output difference."""
    run_ref = lambda: ref(x, t, encoder_hidden_states=context).sample  # noqa: E731
    run_ours = lambda: ours(x, t, context)                              # noqa: E731
    out_ref, out_ours = run_ref(), run_ours()                          # warm-up
    rel = ((out_ours.float() - out_ref.float()).abs().max() / out_ref.float().abs().max()).item()
    times: dict[str, list[float]] = {"ref": [], "ours": []}
    for _ in range(repeats):                                           # alternate, so load drift hits both
        for name, fn in (("ref", run_ref), ("ours", run_ours)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["ref"]), statistics.median(times["ours"]), rel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per model and dtype (median)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=None, help="latent height and width (default 64, --quick 16)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--channels-last", action="store_true", help="both models and the latents in channels_last")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="smoke check: 16x16 latents, one repeat")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    args.size = args.size or (16 if args.quick else 64)
    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)

    config = UNetConfig()
    ref, ours = build_models(config, args.seed)
    x = torch.randn(args.batch, 4, args.size, args.size)
    t = torch.full((args.batch,), 981)
    context = torch.randn(args.batch, 77, config.context_dim)
    flops = count_flops(config, x, t, context)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    print(f"SD-v1 UNet, batch {args.batch}, latents {args.size}x{args.size}, context 77x768, "
          f"{flops / 1e9:.1f} GFLOP/step, {torch.get_num_threads()} threads, {memory_format}, "
          f"median of {args.repeats}", flush=True)
    print(f"{'dtype':6} {'diffusers s':>12} {'ours s':>8} {'ours/diff':>10} {'diff GFLOP/s':>13} "
          f"{'ours GFLOP/s':>13} {'rel diff':>9}")
    for name in args.dtypes:          # models are converted in place, in the order given
        dtype = DTYPES[name]
        ref.to(dtype=dtype, memory_format=memory_format)
        ours.to(dtype=dtype, memory_format=memory_format)
        xd = x.to(dtype).contiguous(memory_format=memory_format)
        with torch.inference_mode():
            t_ref, t_ours, rel = time_pair(ref, ours, xd, t, context.to(dtype), args.repeats)
        print(f"{name:6} {t_ref:12.3f} {t_ours:8.3f} {t_ours / t_ref:10.3f} {flops / t_ref / 1e9:13.1f} "
              f"{flops / t_ours / 1e9:13.1f} {rel:9.2e}", flush=True)


if __name__ == "__main__":
    main()
