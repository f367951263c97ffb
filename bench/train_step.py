"""Training throughput of the toy UNet (issue 18's first lever): seconds per step and compute utilisation, side by side.

One step is what `msbd.toy.train_ldm` does per batch, reduced to the model: latents [B, 4, 16, 16] noised at random
timesteps, the UNet's eps prediction against the noise (MSE), backward, AdamW. The UNet is the shipped toy
architecture (`msbd/toy/weights/toy-ldm.json`) with random weights (time does not depend on their values).
Variants, each a fresh model and optimiser, run interleaved `--repeats` times after a warm-up so that a noisy
machine hits all of them alike; the median is reported with samples per second and the achieved GFLOP/s of the
step (FLOPs counted once by torch.utils.flop_counter), next to a large fp32 matmul's GFLOP/s on the same threads
(an attainable peak for this CPU):

    fp32            the plain step (what train_toy.py runs)
    channels_last   NHWC weights and activations
    bf16            forward and backward under bf16 autocast (fp32 weights and AdamW)
    bf16_cl         both
    compiled        torch.compile of the UNet (`--compile`; the compile time is reported apart)

    .venv/bin/python bench/train_step.py [--batch 64] [--repeats 5] [--threads N] [--compile] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ldm.config import LDMConfig  # noqa: E402
from ldm.models.unet import UNetModel  # noqa: E402

VARIANTS = {"fp32": (False, False), "channels_last": (False, True), "bf16": (True, False), "bf16_cl": (True, True)}


def toy_config() -> LDMConfig:
    return LDMConfig.from_dict(json.loads((ROOT / "msbd/toy/weights/toy-ldm.json").read_text()))


def toy_unet(seed: int = 0) -> UNetModel:
    torch.manual_seed(seed)
    return UNetModel(toy_config().unet)


def make_batch(batch: int, context_dim: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, 4, 16, 16, generator=g)
    noise = torch.randn(batch, 4, 16, 16, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    alpha = torch.linspace(0.9991, 0.0047, 1000)[t].view(-1, 1, 1, 1)      # roughly SD's alpha_bar
    x_t = alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise
    context = torch.randn(batch, 77, context_dim, generator=g)
    return x_t, t, context, noise


class Trainer:
    """One model, its optimiser and its step function for a variant."""

    def __init__(self, bf16: bool, channels_last: bool, compiled: bool = False) -> None:
        self.model = toy_unet()
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.layout).train()
        self.forward = torch.compile(self.model) if compiled else self.model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.bf16 = bf16

    def step(self, x_t, t, context, noise) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            eps = self.forward(x_t.contiguous(memory_format=self.layout), t, context)
        loss = F.mse_loss(eps.float(), noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()


def step_flops(batch: tuple[torch.Tensor, ...]) -> int:
    trainer = Trainer(False, False)
    with FlopCounterMode(display=False) as counter:
        trainer.step(*batch)
    return counter.get_total_flops()


def matmul_gflops(n: int = 2048, repeats: int = 3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile variant")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        print("error: --batch and --repeats must be >= 1", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = make_batch(args.batch, toy_config().unet.context_dim)
    flops = step_flops(batch)
    peak = matmul_gflops()
    trainers = {name: Trainer(*flags) for name, flags in VARIANTS.items()}
    compile_s = None
    if args.compile:
        trainers["compiled"] = Trainer(False, False, compiled=True)
        compile_s = _timed(lambda: trainers["compiled"].step(*batch))
    for trainer in trainers.values():                                  # warm-up
        trainer.step(*batch)
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(args.repeats):
        for name, trainer in trainers.items():
            times[name].append(_timed(lambda: trainer.step(*batch)))
    print(f"toy UNet training step, batch {args.batch} at 16x16 latents, {torch.get_num_threads()} threads, "
          f"{flops / 1e9:.1f} GFLOP a step; fp32 matmul 2048^3: {peak:.0f} GFLOP/s"
          + (f"; torch.compile took {compile_s:.1f} s" if compile_s is not None else ""))
    print("| variant | median s/step | samples/s | GFLOP/s | of matmul peak | vs fp32 |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(times["fp32"])
    result = {"batch": args.batch, "threads": torch.get_num_threads(), "gflop_per_step": flops / 1e9,
              "matmul_gflops": peak, "compile_s": compile_s, "variants": {}}
    for name, values in times.items():
        med = statistics.median(values)
        rate = flops / med / 1e9
        print(f"| {name} | {med:.3f} | {args.batch / med:.1f} | {rate:.1f} | {rate / peak:.0%} | x{med / base:.2f} |")
        result["variants"][name] = {"median_s": med, "all_s": values, "gflops": rate}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
