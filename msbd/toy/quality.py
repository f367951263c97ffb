"""The toy world's quality bars (issue: the embedded toy world), measured on fresh held-out renders.

Each `measure_*` function returns plain numbers; `quality_report` runs them all and compares with `BARS`.
Text-to-image prompts are single-object captions ("a red star") drawn from held-out seeds; a generated image is
judged by `judge_generation`: the components of the prompt's colour (analyser rules: saturated pixels, nearest
palette hue, a minimum area), the shape of the largest, and the colour that covers most saturated pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from msbd.toy.analyser import AnalyserConfig, classify_shape, colour_classes, components
from msbd.toy.data import seed_range
from msbd.toy.scenes import COLOURS, SceneObject
from msbd.toy.shapes import SHAPES

# name -> (threshold, direction): ">=" means the figure must reach the threshold
BARS: dict[str, tuple[float, str]] = {
    "vae_psnr_db": (29.0, ">="),                 # issue 18 raised the bars: VAE 27 -> 29 dB, inpainting 0.80 -> 0.90,
    "t2i_colour_acc": (0.90, ">="),
    "t2i_shape_acc": (0.75, ">="),
    "t2i_one_object": (0.85, ">="),
    "inpaint_success": (0.90, ">="),             # and the inpainted object must have the prompt's shape too (new)
    "inpaint_shape_acc": (0.70, ">="),
    "inpaint_outside_unchanged": (1.0, ">="),
    "clip_top1": (0.90, ">="),
    "sr_gain_db": (2.0, ">="),
}


@dataclass(frozen=True)
class Judgement:
    count: int
    colour: str | None
    shape: str | None

    def ok(self, colour: str, shape: str) -> dict[str, bool]:
        return {"colour_ok": self.colour == colour, "shape_ok": self.shape == shape, "one_object": self.count == 1}


def judge_generation(image: np.ndarray, colour: str, min_area_frac: float = 0.01,
                     config: AnalyserConfig = AnalyserConfig()) -> Judgement:
    """Objects of `colour` in a generated uint8 [H, W, 3] image, the shape of the largest, the dominant colour."""
    classes = colour_classes(image, config.chroma_min)
    min_area = max(config.min_area_px, min_area_frac * image.shape[0] * image.shape[1])
    found = components(classes == COLOURS.index(colour), min_area)
    shape = classify_shape(found[0], config.shape_step_deg, config.shape_max_px)[0] if found else None
    votes = np.bincount(classes[classes >= 0].astype(np.int64), minlength=len(COLOURS))
    dominant = COLOURS[int(votes.argmax())] if votes.any() else None
    return Judgement(len(found), dominant, shape)


def single_object_prompts(n: int, offset: int = 0) -> list[tuple[str, str, str]]:
    """(prompt, colour, shape) of n held-out single-object captions, colours and shapes drawn from the seeds."""
    out = []
    for seed in seed_range("heldout", n, offset):
        rng = np.random.default_rng(seed)
        colour, shape = str(rng.choice(COLOURS)), str(rng.choice(SHAPES))
        out.append((SceneObject(shape, colour, 0.5, 0.5, 0.3).noun, colour, shape))
    return out


def inpainting_tasks(n: int) -> list:
    """The n held-out edit tasks (`random_edit_task`) of the inpainting bar."""
    from msbd.toy.scenes import random_edit_task
    return [random_edit_task(seed) for seed in seed_range("heldout", n, offset=2000)]


def count_prompts(n: int) -> list[tuple[str, str, str]]:
    """The n held-out single-object prompts of the 4x-native-size count."""
    return single_object_prompts(n, offset=1000)


# ------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def measure_vae(bundle, n: int = 64, size: int = 128) -> dict:
    """Mean PSNR (dB, peak 255 after uint8 rounding) of encode(mean) -> decode on n held-out renders."""
    from msbd.toy.data import render_seed
    psnrs = []
    for seed in seed_range("heldout", n):
        image = render_seed(seed, size, size)[0]
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
        out = (bundle.decode(bundle.encode(x))[0].permute(1, 2, 0).numpy() * 255).round()
        mse = float(((out - image.astype(np.float64)) ** 2).mean())
        psnrs.append(10 * math.log10(255.0**2 / max(mse, 1e-12)))
    return {"vae_psnr_db": float(np.mean(psnrs)), "vae_psnr_min_db": float(np.min(psnrs)), "vae_n": n}


def latent_blur(z: torch.Tensor) -> torch.Tensor:
    """A 3 x 3 binomial blur of each latent channel (replicate padding)."""
    k = torch.tensor([1.0, 2.0, 1.0], dtype=z.dtype, device=z.device)
    k = (k[:, None] * k[None, :] / 16).expand(z.shape[1], 1, 3, 3)
    return torch.nn.functional.conv2d(torch.nn.functional.pad(z, (1, 1, 1, 1), mode="replicate"), k,
                                      groups=z.shape[1])


@torch.no_grad()
def measure_latent_blur(bundle, n: int = 32, size: int = 128) -> dict:
    """How much of an object's outline the VAE keeps in the latent's finest frequencies (reported, not a bar).

    n held-out single objects (size 0.3-0.45 of the image, centred, random rotation) are encoded, decoded as they are
    and after `latent_blur`; the figures are the shares whose shape `judge_generation` still names correctly. A
    latent that a denoiser can produce keeps shapes under a mild blur; the shipped VAE does not (see README)."""
    from dataclasses import replace as dc_replace
    from msbd.toy.scenes import random_scene, render
    plain, blurred = [], []
    for i, (_, colour, shape) in enumerate(single_object_prompts(n, offset=3000)):
        rng = np.random.default_rng(seed_range("heldout", 1, 3000 + i)[0])
        scene = random_scene(rng, n_objects=0)
        scene = dc_replace(scene, objects=(SceneObject(shape, colour, 0.5, 0.5, float(rng.uniform(0.3, 0.45)),
                                                       float(rng.uniform(0, 2 * math.pi))),))
        x = torch.from_numpy(np.asarray(render(scene, size))).permute(2, 0, 1)[None].float() / 127.5 - 1
        z = bundle.encode(x)
        for latent, out in ((z, plain), (latent_blur(z), blurred)):
            image = (bundle.decode(latent)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            out.append(judge_generation(image, colour).shape == shape)
    return {"vae_shape_kept": float(np.mean(plain)), "vae_shape_kept_latent_blur": float(np.mean(blurred)),
            "vae_blur_n": n}


@torch.no_grad()
def text_to_image(bundle, prompts: list[str], size: int, seed: int, steps: int = 50, guidance: float = 7.5,
                  batch: int = 8, zero_mean_init: bool = False) -> list[np.ndarray]:
    """Plain DDIM text-to-image samples (uint8) at `size` px, one generator per prompt (`zero_mean_init`: the
    sampler's departure that starts from noise with zero per-channel mean, for a side-by-side figure)."""
    from ldm.sampling import SamplerConfig, sample
    from msbd.models import denoiser
    from msbd.pipeline import generator
    f, c = bundle.latent_factor, bundle.vae.config.embed_dim
    uncond = bundle.encode_text([""])
    images = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        config = SamplerConfig(num_steps=steps, guidance_scale=guidance, progress=False, zero_mean_init=zero_mean_init)
        z = sample(denoiser(bundle), config,
                   generators=[generator(seed, 7, start + k) for k in range(len(chunk))],
                   context=bundle.encode_text(chunk), uncond_context=uncond, shape=(len(chunk), c, size // f, size // f))
        for k in range(len(chunk)):
            images.append((bundle.decode(z[k:k + 1])[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    return images


def measure_t2i(bundle, n: int = 64, size: int = 128, seed: int = 0, steps: int = 50, guidance: float = 7.5,
                zero_mean_init: bool = False) -> tuple[dict, list[np.ndarray]]:
    """Colour / shape / one-object accuracy of text-to-image at `size` px over n held-out single-object prompts.

    With zero_mean_init the keys end in `_zero_mean_init` (a reported variant, not the bars' plain DDIM)."""
    prompts = single_object_prompts(n)
    images = text_to_image(bundle, [p for p, _, _ in prompts], size, seed, steps, guidance,
                           zero_mean_init=zero_mean_init)
    oks = [judge_generation(im, colour).ok(colour, shape) for im, (_, colour, shape) in zip(images, prompts)]
    suffix = "_zero_mean_init" if zero_mean_init else ""
    figures = {"t2i_colour_acc": float(np.mean([o["colour_ok"] for o in oks])),
               "t2i_shape_acc": float(np.mean([o["shape_ok"] for o in oks])),
               "t2i_one_object": float(np.mean([o["one_object"] for o in oks]))}
    return {**{k + suffix: v for k, v in figures.items()}, "t2i_n": n}, images


def measure_count_at(bundle, scale: int = 4, n: int = 8, seed: int = 0, steps: int = 50, guidance: float = 7.5
                     ) -> tuple[dict, list[np.ndarray]]:
    """Mean number of objects of the prompt's colour when sampling at `scale` x the native size (paper Fig. 2)."""
    prompts = count_prompts(n)
    images = text_to_image(bundle, [p for p, _, _ in prompts], bundle.native_size * scale, seed, steps, guidance,
                           batch=2)
    counts = [judge_generation(im, colour, min_area_frac=0.002).count for im, (_, colour, _) in zip(images, prompts)]
    return {f"count_at_{scale}x": float(np.mean(counts)), f"count_at_{scale}x_n": n}, images


def measure_inpainting(bundle, config, n: int = 40, size: int = 128, on_case: Callable | None = None
                       ) -> tuple[dict, list[np.ndarray]]:
    """First-stage blended inpainting at native size (RePaint as configured, batch 1, no rerank, no decoder opt):
    the share of tasks where the analyser finds exactly one object of the prompt's colour and the right colour
    inside the mask, the share where that object also has the prompt's shape, and the share whose pixels outside
    the mask are byte-identical to the input."""
    from msbd.config import replace
    from msbd.pipeline import run_msbd
    from msbd.toy.analyser import analyse_edit
    from msbd.toy.scenes import render, render_mask
    cfg = replace(config, first_stage={"batch": 1, "rerank": False}, decoder_opt={"enabled": False}, margin=1.0)
    success, shaped, unchanged, images = [], [], [], []
    for k, task in enumerate(inpainting_tasks(n)):
        image, mask = np.asarray(render(task.source, size)), render_mask(task, size)
        out = run_msbd(image, mask.astype(np.float32), task.prompt, replace(cfg, seed=k), bundle).image
        report = analyse_edit(out, mask, image, task)
        success.append(report.count == 1 and report.colour_ok)
        shaped.append(success[-1] and report.shape_ok)
        unchanged.append(bool((out[~mask] == image[~mask]).all()))
        images.append(out)
    return {"inpaint_success": float(np.mean(success)), "inpaint_shape_acc": float(np.mean(shaped)),
            "inpaint_outside_unchanged": float(np.mean(unchanged)), "inpaint_n": n}, images


def measure_clip(reranker_path: str, n: int = 200) -> dict:
    from msbd.toy.clip_model import TOY_CLIP_NAME, eval_clip_retrieval, load_reranker
    model, _, _ = load_reranker(TOY_CLIP_NAME, reranker_path)
    return {"clip_top1": float(eval_clip_retrieval(model, n)), "clip_n": n}


def measure_sr(sr_path: str, n: int = 16) -> dict:
    from msbd.toy.sr_model import eval_sr, load_sr
    m = eval_sr(load_sr(sr_path), n)
    return {"sr_gain_db": m["gain_db"], "sr_psnr_db": m["psnr_sr"], "bicubic_psnr_db": m["psnr_bicubic"], "sr_n": n}


def verdict(figures: dict) -> list[dict]:
    """One row per bar: figure, bar, PASS/FAIL (a missing figure is FAIL)."""
    rows = []
    for name, (bar, direction) in BARS.items():
        value = figures.get(name)
        ok = value is not None and (value >= bar if direction == ">=" else value <= bar)
        rows.append({"bar": name, "figure": value, "threshold": f"{direction} {bar}", "result": "PASS" if ok else "FAIL"})
    return rows

