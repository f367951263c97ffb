"""Training throughput of the toy UNet (issue 18's first lever): seconds per step and compute utilisation, side by side.

One step is what `msbd.toy.train_ldm` does per batch, reduced to the model: latents [B, C, 16, 16] noised at random
timesteps, the UNet's eps prediction against the noise (MSE), backward, AdamW. The UNet is the shipped toy
architecture (`msbd/toy/weights/toy-ldm.json`, or `--arch` sizes) with random weights (time does not depend on
their values).
Variants, each a fresh model and optimiser, run interleaved `--repeats` times after a warm-up so that a noisy
machine hits all of them alike; the median is reported with samples per second and the achieved GFLOP/s of the
step (FLOPs counted once by torch.utils.flop_counter), next to a large fp32 matmul's GFLOP/s on the same threads
(an attainable peak for this CPU):

    fp32            the plain model step (fp32, as train_toy.py trains)
    channels_last   NHWC weights and activations
    bf16            forward and backward under bf16 autocast (fp32 weights and AdamW)
    bf16_cl         both
    compiled        torch.compile of the UNet (`--compile`; the compile time is reported apart)
    train_toy       what scripts/train_toy.py's ldm stage does per batch, outside Lightning: LDMLitModule's
                    training_step (the frozen text encoder on token ids, min-SNR weighting), AdamW with its LR
                    schedule, the EMA update
    lightning       the same module in a pl.Trainer over a DataLoader of LatentCaptionDataset, as train_toy.py runs
                    it without its log and checkpoint files (time from one batch's start to the next: data, step
                    and every batch-end hook; run as one block after the interleaved rounds)

GFLOP/s and the share of the matmul peak count the UNet step's FLOPs only, also for the last two (whose steps do
more: the text encoder, the EMA, the loop).

`--arch KEY=VALUE ...` times other sizes (train_toy's `arch` options: latent_channels, unet_channels, unet_mult,
unet_res_blocks, unet_head_channels, unet_norm_groups, unet_attention), e.g. `--arch unet_channels=48
unet_head_channels=24 unet_norm_groups=16 latent_channels=16` for a toy world v2 candidate.

    .venv/bin/python bench/train_step.py [--batch 64] [--repeats 5] [--threads N] [--compile] [--arch K=V ...]
                                         [--json PATH]
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


CONFIG = None                       # set by main from --arch; None: the shipped toy-ldm.json


def toy_config() -> LDMConfig:
    if CONFIG is not None:
        return CONFIG
    return LDMConfig.from_dict(json.loads((ROOT / "msbd/toy/weights/toy-ldm.json").read_text()))


def arch_config(pairs: list[str]) -> LDMConfig:
    """The shipped toy config with train_toy's `arch` options changed (`presets.toy_arch`; values as in YAML:
    `unet_channels=48`, `unet_mult=[1,2,4]`). ValueError (one line) for anything it refuses."""
    from dataclasses import replace

    from msbd.toy.presets import toy_arch
    arch = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--arch takes KEY=VALUE, got {pair!r}")
        try:
            arch[key] = json.loads(value)
        except ValueError:
            raise ValueError(f"--arch {key}: {value!r} is not an int or a [list] of ints") from None
    config = toy_config()
    vae, unet = toy_arch(arch, config.text)
    return replace(config, unet=unet, vae=vae)


def toy_unet(seed: int = 0) -> UNetModel:
    torch.manual_seed(seed)
    return UNetModel(toy_config().unet)


def make_batch(batch: int, context_dim: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    c = toy_config().unet.in_channels
    x0 = torch.randn(batch, c, 16, 16, generator=g)
    noise = torch.randn(batch, c, 16, 16, generator=g)
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


def token_ids(batch: int, seed: int = 0) -> torch.Tensor:
    """Token ids of real toy captions (the text encoder's pass costs what it costs in training)."""
    from ldm.models.tokenizer import CLIPTokenizer
    from msbd.toy.scenes import caption, random_scene
    return CLIPTokenizer()([caption(random_scene(seed + i)) for i in range(batch)])


class ModuleTrainer:
    """train_toy.py's ldm stage per batch without Lightning's loop: LDMLitModule.training_step, backward, AdamW and
    its LR schedule, the EMA update (LDMLitModule.on_train_batch_end)."""

    def __init__(self) -> None:
        from msbd.toy.train_ldm import LDMLitModule, LDMTrainConfig
        torch.manual_seed(0)
        config = toy_config()
        self.module = LDMLitModule(config.unet, config.text, LDMTrainConfig(snr_gamma=5.0)).train()
        self.module.log = lambda *args, **kwargs: None                     # no Trainer attached
        optim = self.module.configure_optimizers()
        self.optimizer, self.schedule = optim["optimizer"], optim["lr_scheduler"]["scheduler"]

    def step(self, z0: torch.Tensor, ids: torch.Tensor) -> float:
        loss = self.module.training_step((z0, ids), 0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        self.module.on_train_batch_end(None, (z0, ids), 0)
        return loss.item()


def lightning_times(z0: torch.Tensor, ids: torch.Tensor, steps: int) -> list[float]:
    """Seconds of each of `steps` steps (after one warm-up step) of LDMLitModule in a pl.Trainer over a DataLoader of
    LatentCaptionDataset, as scripts/train_toy.py runs it, less its CSV log (a row every 20 steps) and checkpoint
    (every 100 steps), which are not written here."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from msbd.toy.train_ldm import LatentCaptionDataset, LDMLitModule, LDMTrainConfig

    class StepTimer(pl.Callback):
        """Times from one batch's start to the next (the last one to the end of fit): the data fetch, the step,
        the module's and the callbacks' batch-end hooks (the EMA update) all fall inside."""

        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, *args) -> None:
            self.starts.append(time.perf_counter())

        def on_train_end(self, *args) -> None:
            self.starts.append(time.perf_counter())

    torch.manual_seed(0)
    config = toy_config()
    module = LDMLitModule(config.unet, config.text, LDMTrainConfig(snr_gamma=5.0, batch_size=len(z0)))
    data = LatentCaptionDataset(z0.repeat(steps + 1, 1, 1, 1), ids.repeat(steps + 1, 1), ids[0], 0.1)
    timer = StepTimer()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps + 1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(module, DataLoader(data, batch_size=len(z0), shuffle=True, drop_last=True))
    assert len(timer.starts) == steps + 2                                 # every batch's start, and the end
    return [b - a for a, b in zip(timer.starts[1:-1], timer.starts[2:])]


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
    parser.add_argument("--arch", nargs="+", default=[], metavar="KEY=VALUE",
                        help="other model sizes (train_toy's arch options)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        print("error: --batch and --repeats must be >= 1", file=sys.stderr)
        return 2
    global CONFIG
    try:
        CONFIG = arch_config(args.arch) if args.arch else None
    except ValueError as e:                       # a bad key or value, or sizes the configs refuse
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = make_batch(args.batch, toy_config().unet.context_dim)
    ids = token_ids(args.batch)
    flops = step_flops(batch)
    peak = matmul_gflops()
    trainers = {name: Trainer(*flags) for name, flags in VARIANTS.items()}
    compile_s = None
    if args.compile:
        trainers["compiled"] = Trainer(False, False, compiled=True)
        compile_s = _timed(lambda: trainers["compiled"].step(*batch))
    trainers["train_toy"] = ModuleTrainer()
    args_of = {name: batch for name in trainers} | {"train_toy": (batch[0], ids)}
    for name, trainer in trainers.items():                             # warm-up
        trainer.step(*args_of[name])
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(args.repeats):
        for name, trainer in trainers.items():
            times[name].append(_timed(lambda: trainer.step(*args_of[name])))
    times["lightning"] = lightning_times(batch[0], ids, args.repeats)
    unet = toy_config().unet
    params = sum(p.numel() for p in toy_unet().parameters())
    print(f"toy UNet training step, batch {args.batch} at {unet.in_channels}x16x16 latents, UNet {params / 1e6:.2f} M "
          f"parameters (width {unet.model_channels}, mult {list(unet.channel_mult)}), {torch.get_num_threads()} "
          f"threads, {flops / 1e9:.1f} GFLOP a step; fp32 matmul 2048^3: {peak:.0f} GFLOP/s"
          + (f"; torch.compile took {compile_s:.1f} s" if compile_s is not None else ""))
    print("| variant | median s/step | samples/s | GFLOP/s | of matmul peak | vs fp32 |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(times["fp32"])
    result = {"batch": args.batch, "threads": torch.get_num_threads(), "gflop_per_step": flops / 1e9,
              "arch": args.arch, "unet_params": params,
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
