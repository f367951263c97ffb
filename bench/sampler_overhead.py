"""The sampler's own cost per step next to one UNet step (tiny and SD-v1 configurations), on the CPU.

The sampler runs with a model that costs nothing (`zeros_like`), in its most expensive setting: guidance
(batched [uncond, cond] call), eta = 1 (step noise), a soft mask (background noise and blend), and optionally
RePaint. Its time per denoising call is the loop overhead: schedule set-up, noise draws on per-sample CPU
generators, the DDIM update and the blend. One UNet step is one forward of `UNetModel` on the CFG pair
(batch 2), random weights, float32, under inference_mode. The goal is an overhead below 1% of the SD-v1 step.

    .venv/bin/python bench/sampler_overhead.py [--steps 50] [--repeats 5] [--skip-sd] [--threads N]

`--skip-sd` leaves out the SD-v1 UNet (about 860M parameters, 3.5 GB, ~10 s per call on 2 cores).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ldm.models.unet import UNetConfig, UNetModel
from ldm.sampling import SamplerConfig, sample

# The UNet of ldm.config's "tiny-test" preset (tests), on 16x16 latents.
TINY_UNET = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
                       num_heads=4, context_dim=32, norm_num_groups=8)
CASES = {  # name: (UNet config, latent size, context length)
    "tiny": (TINY_UNET, 16, 77),
    "sd-v1": (UNetConfig(), 64, 77),
}


def zero_model(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """A model that costs nothing, so only the sampler is timed."""
    return torch.zeros_like(x)


def sampler_seconds_per_step(size: int, context_dim: int, config: SamplerConfig, repeats: int) -> float:
    """Median over `repeats` runs of (sample() wall time) / (denoising calls), batch 1, with a soft mask."""
    source = torch.randn(1, 4, size, size)                               # [1, 4, h, w]
    mask = torch.rand(1, 1, size, size)                                  # soft mask in [0, 1]
    context, uncond = torch.randn(1, 77, context_dim), torch.randn(1, 77, context_dim)
    calls = []
    counter = lambda n, t, x, x0: calls.append(n)                        # noqa: E731
    times = []
    for seed in range(repeats + 1):                                      # first run is a warm-up
        calls.clear()
        start = time.perf_counter()
        sample(zero_model, config, generators=[torch.Generator().manual_seed(seed)], context=context,
               uncond_context=uncond, source=source, mask=mask, callback=counter)
        times.append((time.perf_counter() - start) / len(calls))
    return statistics.median(times[1:])


def unet_seconds_per_step(unet_config: UNetConfig, size: int, context_len: int, repeats: int) -> float:
    """Median seconds of one forward on the CFG pair (batch 2), after one warm-up call."""
    torch.manual_seed(0)
    model = UNetModel(unet_config).eval()
    x = torch.randn(2, unet_config.in_channels, size, size)             # [2, 4, h, w]
    t = torch.tensor([981, 981])
    context = torch.randn(2, context_len, unet_config.context_dim)      # [2, 77, D]
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            model(x, t, context)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of the timed sampler runs")
    parser.add_argument("--repeats", type=int, default=5, help="timed sampler runs / tiny UNet calls (median)")
    parser.add_argument("--sd-repeats", type=int, default=1, help="timed SD-v1 UNet calls (each ~10 s)")
    parser.add_argument("--skip-sd", action="store_true", help="do not build or time the SD-v1 UNet")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    configs = {
        "blend": SamplerConfig(num_steps=args.steps, progress=False),
        "blend+tqdm": SamplerConfig(num_steps=args.steps, progress=True),
        "blend+repaint r=2": SamplerConfig(num_steps=args.steps, repaint_steps=2, progress=False),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, batch 1 (UNet: CFG pair)")
    for name, (unet_config, size, context_len) in CASES.items():
        if name == "sd-v1" and args.skip_sd:
            continue
        repeats = args.sd_repeats if name == "sd-v1" else args.repeats
        unet_s = unet_seconds_per_step(unet_config, size, context_len, repeats)
        print(f"\n[{name}] latents 4x{size}x{size}: UNet step {unet_s * 1e3:.2f} ms")
        for label, config in configs.items():
            per_step = sampler_seconds_per_step(size, unet_config.context_dim, config, args.repeats)
            print(f"  sampler ({label:18s}) {per_step * 1e6:8.1f} us/step = {100 * per_step / unet_s:.4f} % of a UNet step")


if __name__ == "__main__":
    main()
