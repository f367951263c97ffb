"""One edit from files to file: validate the request, run MSBD with progress bars, write the PNG atomically.

`edit(image_path, mask_path, prompt, output_path, config, bundle)` is what a command line (scripts/run.py) calls:
1. validate before any model runs: an empty prompt, out-of-range settings (overlap >= tile, negative steps,
   strength outside [0, 1], margin < 1, ...) and unwritable outputs raise `InputError` with one line; a prompt over
   the text encoder's 77 tokens is truncated with a warning; the peak memory is estimated and a run that would not
   fit is refused early, naming the estimate and a setting that would make it fit;
2. run `msbd.pipeline.run_msbd` with a tqdm bar over the stages (and the sampler's bar per stage);
3. write the result atomically with PNG text chunks: prompt, seed, the resolved config (JSON) and the SHA-256 of
   every weights file, in the input's bit depth, alpha, ICC profile and EXIF (outside the mask the input file's
   own values); optionally every intermediate (candidates with their scores, each stage's output).
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from ldm.checkpoint.formats import sha256_file
from msbd.config import MSBDConfig, resolve_seed
from msbd.crop import plan_crop, stage_sizes
from msbd.errors import InputError
from msbd.io import _check_output, load_image, load_mask, load_source, output_like, save_png_atomic
from msbd.memory import available_memory, check_memory, estimate_memory  # noqa: F401  (the edit API's)
from msbd.models import ModelBundle
from msbd.pipeline import EditResult, StageHook, StepHook, TickHook, _ceil64, run_msbd
from msbd.stitch import to_uint8

PathLike = str | os.PathLike


def validate_prompt(prompt: str, bundle: ModelBundle) -> str:
    """The prompt, stripped; empty -> InputError; longer than the encoder's context -> warning (it is truncated)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("prompt is empty: describe what should appear inside the mask")
    prompt = prompt.strip()
    n_tokens = bundle.tokenizer.count_tokens(prompt)
    max_tokens = bundle.tokenizer.context_length - 2
    if n_tokens > max_tokens:
        warnings.warn(f"prompt has {n_tokens} tokens; the text encoder keeps the first {max_tokens} "
                      f"(77 with start/end), the rest is ignored", stacklevel=2)
    return prompt


def validate_config(config: MSBDConfig, multiple: int | None = None) -> None:
    """`MSBDConfig.validate` (and `check_multiples` when the model's size multiple is given) as a one-line
    InputError; seed -1 is replaced in `config` by a drawn seed, so the run and the output's metadata use it."""
    try:
        config.validate()
        if multiple is not None:
            config.check_multiples(multiple)
    except ValueError as err:
        raise InputError(f"invalid setting: {err}") from None
    config.seed = resolve_seed(config.seed)




def weights_hashes(bundle: ModelBundle) -> dict[str, str]:
    """SHA-256 of every weights file of the bundle (folders: of each file inside, sorted); {} for random weights."""
    hashes = {}
    for name, path in bundle.weights_files.items():
        p = Path(path)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            key = name if f == p else f"{name}/{f.relative_to(p)}"
            hashes[key] = sha256_file(f)
    return hashes


def save_intermediates(result: EditResult, directory: PathLike, truncate: bool = False) -> None:
    """Candidates (with scores in scores.json) and each stage's output, as PNGs in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for k, cand in enumerate(result.candidates):
        save_png_atomic(cand, directory / f"candidate_{k}.png")
    (directory / "scores.json").write_text(json.dumps({"scores": result.scores, "chosen": result.chosen}))
    for k, stage in enumerate(result.stages):
        name = stage.name.split()[0]
        save_png_atomic(to_uint8(stage.image, truncate), directory / f"stage_{k}_{name}.png")


def prepare_edit(image_path: PathLike, mask_path: PathLike, prompt: str, output_path: PathLike, config: MSBDConfig,
                 bundle: ModelBundle, memory_limit_bytes: int | None = None):
    """Every check of `edit` before a model runs (InputError, nothing written; seed -1 resolved in `config`):
    returns (stripped prompt, image [H, W, 3] uint8, mask [H, W], crop plan)."""
    prompt = validate_prompt(prompt, bundle)
    validate_config(config, bundle.size_multiple)
    _check_output(Path(output_path), (image_path, mask_path), allow_lossy=False)
    image = load_image(image_path)
    mask = load_mask(mask_path, image.shape[:2])
    plan = plan_crop(mask, config.margin, _ceil64(config.first_stage.size), config.reference_quirks.crop_rule)
    check_memory(config, bundle, image.shape[:2], plan.long_edge, memory_limit_bytes)
    return prompt, image, mask, plan


def edit(image_path: PathLike, mask_path: PathLike, prompt: str, output_path: PathLike, config: MSBDConfig,
         bundle: ModelBundle, intermediates_dir: PathLike | None = None, memory_limit_bytes: int | None = None,
         progress: bool = True, on_stage: StageHook | None = None, on_step: StepHook | None = None,
         on_tick: TickHook | None = None) -> EditResult:
    """Edit one image from files; returns the pipeline's result after writing `output_path` (PNG).

    on_stage / on_step / on_tick: passed to `run_msbd` (progress and cancelling in the web app); nothing is written
    when they raise."""
    # 1. Validate everything before a model runs
    prompt, image, mask, plan = prepare_edit(image_path, mask_path, prompt, output_path, config, bundle,
                                             memory_limit_bytes)
    source = load_source(image_path)               # the output's outside pixels, read before the models run (not
                                                   # after minutes of editing, when the file may have changed)
    # 2. Run with an overall bar over the stages (the sampler adds one per stage when config.progress)
    up = config.upscale
    n_stages = len(stage_sizes(plan.long_edge, _ceil64(config.first_stage.size), up.max_edgelen, up.straight_to_grid))
    bar = tqdm(total=n_stages + 2, desc="MSBD", disable=not progress)

    def stage_hook(name: str) -> None:
        if name != "first" and ":" not in name:    # "stage2: tiles 1-16/43" names progress inside a stage
            bar.update(1)
        bar.set_postfix_str(name)
        if on_stage is not None:
            on_stage(name)

    run_config = dataclasses.replace(config, progress=progress and config.progress)
    try:
        result = run_msbd(image, mask, prompt, run_config, bundle, on_stage=stage_hook, on_step=on_step,
                          on_tick=on_tick)
        bar.update(1)
    finally:
        bar.close()
    # 3. Write the output (and intermediates) atomically with provenance (config.seed: the seed used, -1
    #    resolved by validate_config), in the input's own space: bit depth, alpha, ICC profile and EXIF, and
    #    outside the mask the input file's own values (msbd.io.output_like)
    chunks = {"prompt": prompt, "seed": str(config.seed), "msbd_config": json.dumps(config.to_dict()),
              "weights_sha256": json.dumps(weights_hashes(bundle))}
    pixels = output_like(source, result.image, mask >= 0.5)
    save_png_atomic(pixels, output_path, chunks, protected=(image_path, mask_path), icc_profile=source.icc_profile,
                    exif=source.exif)
    if intermediates_dir is not None:
        save_intermediates(result, intermediates_dir, config.reference_quirks.truncate_uint8)
    return result
