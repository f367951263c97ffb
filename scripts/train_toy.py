"""Train the embedded toy world's models from scratch: VAE, UNet + text encoder, reranking CLIP, x4 SR.

    python scripts/train_toy.py                      # all stages, resumable: run again after an interruption
    python scripts/train_toy.py stages=[ldm] ldm.max_minutes=20 force=[ldm]
    python scripts/train_toy.py run_dir=train_runs/toy_v2 snapshot=true   # the UNet as it stands, mid-run:
                                                                          # run_dir/snapshots/step<N>/

Every stage trains for a wall-clock budget with pytorch-lightning, checkpoints to `run_dir` every few
hundred steps (`last.ckpt`; an interrupted stage continues from there, with the time already spent counted),
and exports small safetensors files to `export_dir`. The diffusion weights are exported in the CompVis layout
(`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`), so they load through
the same code path as a real `sd-v1-4.ckpt`. `MODEL_CARD.md` records data, command, time and metrics.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ldm.models.tokenizer import CLIPTokenizer  # noqa: E402
from ldm.checkpoint.components import PREFIXES  # noqa: E402
from ldm.checkpoint.formats import TEXT_FROM_KEY, TEXT_SHA_KEY, sha256_file  # noqa: E402
from msbd.errors import composition_message  # noqa: E402
from msbd.toy import presets  # noqa: E402
from msbd.toy.data import images_to_tensor, render_cache, seed_range, single_object_renderer  # noqa: E402
from msbd.toy.train_ldm import (  # noqa: E402
    DecoderLitModule, ImageCropDataset, LatentCaptionDataset, LDMLitModule, LDMTrainConfig, VAELitModule, VAETrainConfig,
    latent_scale_factor, object_cells, round_scale,
)


STAGES = ("vae", "clip", "ldm", "decoder", "sr")
TEXT_PREFIX = PREFIXES["text"]                  # the SD v1 text encoder's checkpoint prefix
SINGLE_OFFSET = 500_000      # the extra single-object scenes (data.n_single) use training seeds from here on


def vae_config(cfg: DictConfig) -> VAETrainConfig:
    return VAETrainConfig(lr=cfg.vae.lr, kl_weight=cfg.vae.kl_weight, edge_weight=cfg.vae.edge_weight,
                          crop=cfg.vae.crop, batch_size=cfg.vae.batch_size,
                          equivariance_weight=cfg.vae.equivariance_weight,
                          latent_blur_weight=cfg.vae.latent_blur_weight)


def decoder_config(cfg: DictConfig) -> VAETrainConfig:
    """The decoder fine-tune's settings: its own lr, batch and crop, the VAE's edge weight (the same loss)."""
    return VAETrainConfig(lr=cfg.decoder.lr, batch_size=cfg.decoder.batch_size, crop=cfg.decoder.crop,
                          edge_weight=cfg.vae.edge_weight)


def ldm_config(cfg: DictConfig) -> LDMTrainConfig:
    return LDMTrainConfig(lr=cfg.ldm.lr, warmup_steps=cfg.ldm.warmup_steps, batch_size=cfg.ldm.batch_size,
                          caption_dropout=cfg.ldm.caption_dropout, ema_decay=cfg.ldm.ema_decay,
                          snr_gamma=cfg.ldm.snr_gamma, decay_start=cfg.ldm.decay_start, max_steps=cfg.ldm.max_steps,
                          object_weight=cfg.ldm.object_weight, train_text=not cfg.ldm.freeze_text,
                          offset_noise=cfg.ldm.offset_noise)


def text_config(cfg: DictConfig):
    """The text encoder's sizes: the toy CLIP's text tower with `ldm.freeze_text`, else the jointly trained one."""
    return presets.TOY_CLIP_TEXT if cfg.ldm.freeze_text else presets.TOY_JOINT_TEXT


def arch_configs(cfg: DictConfig):
    """(AutoencoderConfig, UNetConfig) of the `arch` options (`presets.toy_arch`: the shipped sizes by default)."""
    return presets.toy_arch(OmegaConf.to_container(cfg.arch, resolve=True), text_config(cfg))


def ldm_model_config(cfg: DictConfig, scale: float = 1.0):
    """The LDMConfig this run trains and exports (its text encoder per `ldm.freeze_text`, its sizes per `arch`)."""
    return presets.toy_ldm_config(scale, text_config(cfg), *arch_configs(cfg))


def clip_config(cfg: DictConfig):
    from msbd.toy.clip_model import ClipTrainConfig
    return ClipTrainConfig(max_steps=cfg.clip.max_steps)


def sr_config(cfg: DictConfig):
    from msbd.toy.sr_model import SRTrainConfig
    return SRTrainConfig(max_steps=cfg.sr.max_steps, clean_prob=cfg.sr.clean_prob, patch=cfg.sr.patch,
                         batch_size=cfg.sr.batch_size, lr=cfg.sr.lr,
                         edge_prob=cfg.sr.edge_prob)


def check_types(cfg: DictConfig) -> None:
    """Each scalar option has the type of its default in configs/train_toy.yaml (an int is a float too)."""
    defaults = OmegaConf.load(os.path.join(ROOT, "configs", "train_toy.yaml"))
    for section in ("data", "arch", "vae", "ldm", "decoder", "clip", "sr"):
        for key, default in defaults[section].items():
            value = cfg[section][key]
            if (isinstance(default, bool) != isinstance(value, bool)              # bool is an int: checked apart
                    or isinstance(default, (int, float)) and not isinstance(value, (int, float))
                    or isinstance(default, int) and not isinstance(value, int)
                    or isinstance(default, str) and not isinstance(value, str)):
                kind = "true or false" if isinstance(default, bool) else type(default).__name__
                raise ValueError(f"{section}.{key} must be {kind}, got {value!r}")


def validate(cfg: DictConfig) -> None:
    """Raise ValueError (one line) for a configuration that would fail or misbehave only once training runs."""
    check_types(cfg)
    for key in ("dry_run", "snapshot"):
        if not isinstance(cfg[key], bool):
            raise ValueError(f"{key} must be true or false, got {cfg[key]!r}")
    for key in ("stages", "force"):
        unknown = [s for s in cfg[key] if s not in STAGES]
        if unknown:
            raise ValueError(f"{key}: unknown stage(s) {unknown}; stages are {list(STAGES)}")
    if cfg.threads < 1 or cfg.data.n_train < 1 or cfg.data.size % 8:
        raise ValueError(f"need threads >= 1, data.n_train >= 1 and data.size divisible by 8, got {cfg.threads}, "
                         f"{cfg.data.n_train}, {cfg.data.size}")
    if cfg.data.n_train > SINGLE_OFFSET or not 0 <= cfg.data.n_single <= SINGLE_OFFSET:
        raise ValueError(f"need data.n_train <= {SINGLE_OFFSET} and 0 <= data.n_single <= {SINGLE_OFFSET} (the "
                         f"two seed ranges must not overlap), got {cfg.data.n_train}, {cfg.data.n_single}")
    sizes = cfg.data.single_sizes
    sizes = list(sizes) if OmegaConf.is_list(sizes) else [sizes]
    if len(sizes) != 2 or not all(isinstance(v, (int, float)) for v in sizes) or not 0 < sizes[0] <= sizes[1] <= 1:
        raise ValueError(f"data.single_sizes must be [min, max] with 0 < min <= max <= 1, got {sizes}")
    for stage in cfg.stages:
        if stage == "vae" and cfg.vae.init and cfg.vae.max_minutes == 0:
            continue                                # vae.init taken as it is
        if not cfg[stage].max_minutes > 0:
            raise ValueError(f"{stage}.max_minutes must be positive, got {cfg[stage].max_minutes}"
                             + (" (0 only with vae.init)" if stage == "vae" else ""))
        if stage not in ("vae", "decoder") and cfg[stage].max_steps < (1 if stage != "ldm" else 0):
            bound = ">= 0 (0: no step limit)" if stage == "ldm" else "positive"
            raise ValueError(f"{stage}.max_steps must be {bound}, got {cfg[stage].max_steps}")
    needs_clip = "ldm" in cfg.stages and cfg.ldm.freeze_text and "clip" not in cfg.stages
    if needs_clip and not os.path.isfile(clip_path(cfg)):
        raise ValueError(f"ldm.freeze_text takes the text encoder from the toy CLIP, and there is none "
                         f"({clip_path(cfg)} is missing): add the clip stage (stages=[clip,ldm]) or set "
                         f"ldm.freeze_text=false")
    for build in (vae_config, decoder_config, ldm_config, clip_config, sr_config, arch_configs):
        build(cfg)                                  # the dataclasses check their own values
    for stage in ("vae", "ldm"):
        if cfg[stage].init and stage in cfg.stages:
            try:
                load_init(stage, cfg[stage].init, ldm_model_config(cfg))
            except ValueError as err:               # ldm.checkpoint's CheckpointError: what does not fit
                raise ValueError(f"{stage}.init: {err}") from None
    if not cfg.snapshot:                            # a snapshot takes the run's own sizes (write_snapshot)
        check_run_dir(cfg)


STAGE_FILES = ("last.ckpt", "arch.json", "metrics.json", "vae.safetensors", "ldm.safetensors", "clip.safetensors",
               "sr.safetensors")


def forced_stages(cfg: DictConfig) -> set[str]:
    """The stages of this run that start from scratch: `force`, and the ldm stage with a forced VAE (its latents
    come from the VAE)."""
    forced = set(cfg.force) & set(cfg.stages)
    if "vae" in forced:                             # the UNet's latents and the decoder's start come from the VAE
        forced |= {"ldm", "decoder"} & set(cfg.stages)
    return forced


def start_fresh(cfg: DictConfig, stage: str) -> str | None:
    """Move a forced stage's checkpoint, exports and arch record into run_dir/<stage>/replaced-<time>/ (kept, not
    deleted), so that it trains from scratch; the ldm stage's latent caches stay. Returns that folder, or None."""
    stage_dir = os.path.join(cfg.run_dir, stage)
    present = [f for f in STAGE_FILES if os.path.isfile(os.path.join(stage_dir, f))]
    if not present:
        return None
    aside = os.path.join(stage_dir, time.strftime("replaced-%Y%m%d-%H%M%S"))
    os.makedirs(aside, exist_ok=True)
    for f in present:
        os.replace(os.path.join(stage_dir, f), os.path.join(aside, f))
    return aside


def _arch_record(cfg: DictConfig, stage: str) -> dict:
    """What of `arch` a stage's weights depend on (the VAE: its latent channels; the UNet: every size, and the width
    of the text it attends to)."""
    arch = OmegaConf.to_container(cfg.arch, resolve=True)
    if stage in ("vae", "decoder"):
        return {"latent_channels": arch["latent_channels"]}
    return {**arch, "context_dim": text_config(cfg).hidden_size}


def write_arch(cfg: DictConfig, stage: str) -> None:
    """run_dir/<stage>/arch.json: the sizes this stage trains, for check_run_dir of later runs."""
    stage_dir = os.path.join(cfg.run_dir, stage)
    os.makedirs(stage_dir, exist_ok=True)
    with open(os.path.join(stage_dir, "arch.json"), "w") as f:
        json.dump(_arch_record(cfg, stage), f, indent=2)


def _stored_shapes(path: str, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a safetensors file or a Lightning checkpoint's state_dict (keys under `prefix`, stripped)."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=False).get("state_dict", {})
    return {k[len(prefix):]: tuple(v.shape) for k, v in state.items() if k.startswith(prefix)}


def check_run_dir(cfg: DictConfig) -> None:
    """A VAE or UNet already in run_dir (exported or a last.ckpt to resume) of a stage this run trains must have
    this run's `arch` sizes: its arch.json must match (sizes that leave the tensor shapes alone, such as head
    channels and GroupNorm groups, count too), and without one (older runs) its tensor names and shapes. A run with
    other sizes needs another run_dir or `force=[stage]` (the old files are moved aside). A VAE that would train on
    (its budget raised) under a UNet or decoder fine-tune built on it is refused unless those are forced too; an
    unreadable last.ckpt is refused here rather than once its stage begins."""
    from ldm.models.autoencoder import AutoencoderKL
    from ldm.models.unet import UNetModel
    forced = forced_stages(cfg)
    if "vae" in cfg.stages and "vae" not in forced and vae_trains_on(cfg):
        files = ("last.ckpt", "ldm.safetensors", "vae.safetensors")
        built = [s for s in ("ldm", "decoder")
                 if s not in forced and any(os.path.isfile(os.path.join(cfg.run_dir, s, f)) for f in files)]
        if built:
            progress = stage_progress(os.path.join(cfg.run_dir, "vae"))
            spent = math.floor(progress[0] * 10) / 10 if progress else 0.0
            raise ValueError(f"vae.max_minutes={cfg.vae.max_minutes} would train the VAE on (it has had {spent} min), "
                             f"but the {' and '.join(built)} stage in {cfg.run_dir} was built on it: keep "
                             f"vae.max_minutes <= {spent}, or run {','.join(built)} too with force=[{','.join(built)}]"
                             f" (they start again)")
    for stage in (s for s in ("vae", "decoder", "ldm") if s in cfg.stages and s not in forced):
        stage_dir = os.path.join(cfg.run_dir, stage)
        stage_progress(stage_dir)                   # readable, or one line now rather than a traceback later
        record = os.path.join(stage_dir, "arch.json")
        if os.path.isfile(record):
            with open(record) as f:
                stored = json.load(f)
            wanted = _arch_record(cfg, stage)
            if stored != wanted:
                diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
                raise ValueError(f"{record}: {stage} trained with {diff[0]}={stored.get(diff[0])}, this run has "
                                 f"{wanted.get(diff[0])}: use another run_dir or force=[{stage}]")
            continue
        vae_cfg, unet_cfg = arch_configs(cfg)
        model = AutoencoderKL(vae_cfg) if stage != "ldm" else UNetModel(unet_cfg)
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        for name in ("last.ckpt", f"{'vae' if stage == 'decoder' else stage}.safetensors"):
            path = os.path.join(stage_dir, name)
            if not os.path.isfile(path):
                continue
            stored = _stored_shapes(path, "vae." if stage != "ldm" else "unet.")
            if stage == "ldm" and name.endswith(".safetensors"):
                stored = {k.removeprefix("model.diffusion_model."): v for k, v in stored.items()
                          if k.startswith("model.diffusion_model.")}
            bad = sorted(k for k in set(want) | set(stored) if stored.get(k) != want.get(k))
            if bad:
                raise ValueError(f"{path} was trained with other arch sizes ({bad[0]} is {stored.get(bad[0])}, "
                                 f"arch wants {want.get(bad[0])}): use another run_dir or force=[{stage}]")


def clip_path(cfg: DictConfig) -> str:
    """The source of the frozen text encoder: the toy CLIP in export_dir (written there by the clip stage), else
    the shipped one."""
    exported = os.path.join(cfg.export_dir, os.path.basename(presets.CLIP_WEIGHTS))
    return exported if os.path.isfile(exported) else presets.CLIP_WEIGHTS


def precheck(argv: list[str]) -> None:
    """Compose the command line's config and validate it: a bad override is one `error:` line and exit 2."""
    if any(a.startswith("-") for a in argv):
        return                                      # --help, --cfg, -m, ...: leave them to Hydra
    from hydra import compose, initialize_config_dir
    try:
        with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
            cfg = compose("train_toy", overrides=argv)
        validate(cfg)
        if cfg.dry_run:                             # before Hydra makes its run folder: nothing is written
            print(f"options valid; run_dir {cfg.run_dir}, export_dir {cfg.export_dir}, stages {list(cfg.stages)}")
            sys.exit(0)
        if cfg.snapshot:
            print(f"wrote {write_snapshot(cfg)}")
            sys.exit(0)
    except ValueError as err:
        _exit_with(err)
    except Exception as err:  # noqa: BLE001  (composition: misspelled key, wrong type)
        print(f"error: {composition_message(err)}", file=sys.stderr)
        sys.exit(2)


def ema_export_state(module_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The EMA UNet and text encoder of an LDMLitModule state dict (or a Lightning checkpoint's), under their
    CompVis names, as the ldm stage exports them."""
    out = {}
    for prefix, target in (("ema_unet.", "model.diffusion_model."), ("ema_text.", TEXT_PREFIX)):
        out.update({target + k.removeprefix(prefix): v for k, v in module_state.items() if k.startswith(prefix)})
    return out


def _exit_with(err: ValueError) -> None:
    """A bad option or run directory: its message's first line as one `error:` line, exit code 2."""
    print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
    sys.exit(2)


def write_snapshot(cfg: DictConfig) -> str:
    """Export the ldm stage's EMA weights as they stand in its last.ckpt (a run may be training meanwhile: it is
    only read) with the run's VAE, as the shipped files (toy-ldm.safetensors, toy-ldm.json, the linked CLIP), into
    run_dir/snapshots/step<N>/ (written aside, then moved into place); returns that folder. The sizes are the run's
    own (run_dir/<stage>/arch.json), not the command line's. ValueError (one line) when the run has no such files."""
    ldm_dir, vae_dir = os.path.join(cfg.run_dir, "ldm"), os.path.join(cfg.run_dir, "vae")
    need = [export_vae_path(cfg), os.path.join(ldm_dir, "last.ckpt"),
            os.path.join(ldm_dir, "latents.safetensors"), os.path.join(vae_dir, "arch.json"),
            os.path.join(ldm_dir, "arch.json")]
    missing = [p for p in need if not os.path.isfile(p)]
    if missing:
        raise ValueError(f"snapshot: {missing[0]} is missing (the run's ldm stage has not checkpointed yet)")
    records = []
    for path in need[3:]:
        try:
            with open(path) as f:
                records.append(json.load(f))
        except (OSError, ValueError) as err:
            raise ValueError(f"snapshot: cannot read {path} ({type(err).__name__})") from None
    vae_arch, ldm_arch = records
    if vae_arch.get("latent_channels") != ldm_arch.get("latent_channels"):
        raise ValueError(f"snapshot: {need[3]} and {need[4]} disagree on latent_channels: the VAE was retrained "
                         f"after this UNet checkpoint")
    run_cfg = OmegaConf.merge(cfg, {"arch": {k: v for k, v in ldm_arch.items() if k in presets.TOY_ARCH}})
    if ldm_arch.get("context_dim") != text_config(run_cfg).hidden_size:
        raise ValueError(f"snapshot: the run's UNet attends to text of width {ldm_arch.get('context_dim')}, this "
                         f"command's text encoder is {text_config(run_cfg).hidden_size} wide: give the run's "
                         f"ldm.freeze_text")
    try:
        ckpt = torch.load(need[1], map_location="cpu", weights_only=False)
        step, ldm_state = int(ckpt["global_step"]), ema_export_state(ckpt["state_dict"])
    except Exception as err:  # noqa: BLE001  (the run rewrites last.ckpt every 100 steps)
        raise ValueError(f"snapshot: cannot read {need[1]} ({type(err).__name__}; the run may be writing it: "
                         f"try again)") from None
    from safetensors import safe_open
    with safe_open(need[2], "pt") as f:
        scale = round_scale(f.get_tensor("scale"))
    folder = os.path.join(cfg.run_dir, "snapshots", f"step{step}")
    partial = f"{folder}.partial-{os.getpid()}"
    try:
        export(run_cfg, need[0], ldm_state, scale, export_dir=partial)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.replace(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def _trainer(stage_dir: str, max_minutes: float, max_steps: int = -1) -> pl.Trainer:
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=stage_dir, save_last=True, save_top_k=0,
                                              every_n_train_steps=100)
    return pl.Trainer(accelerator="cpu", devices=1, max_epochs=-1, max_steps=max_steps,
                      max_time={"minutes": max_minutes},
                      callbacks=[checkpoint], logger=pl.loggers.CSVLogger(stage_dir, name="log"),
                      log_every_n_steps=20, enable_model_summary=False, num_sanity_val_steps=0)


def _fit(module: pl.LightningModule, loader: DataLoader, stage_dir: str, max_minutes: float,
         max_steps: int = -1) -> float:
    """Fit for the time budget (and `max_steps` if > 0), resuming from `stage_dir/last.ckpt`; returns the minutes
    spent in this call."""
    last = os.path.join(stage_dir, "last.ckpt")
    start = time.time()
    trainer = _trainer(stage_dir, max_minutes, max_steps if max_steps > 0 else -1)
    trainer.fit(module, loader, ckpt_path=last if os.path.exists(last) else None)
    trainer.save_checkpoint(last)          # the exported state, so a later run resumes (or re-exports) exactly it
    return (time.time() - start) / 60


def stage_progress(stage_dir: str) -> tuple[float, int] | None:
    """(minutes trained, steps) from the stage's last.ckpt (Lightning's Timer state; infinite minutes when it has
    none, so that such a stage counts as spent), None without a last.ckpt; ValueError (one line) when unreadable."""
    last = os.path.join(stage_dir, "last.ckpt")
    if not os.path.exists(last):
        return None
    try:
        try:
            ckpt = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:                               # a legacy (non-zip) file cannot be memory-mapped
            ckpt = torch.load(last, map_location="cpu", weights_only=False)
        seconds = ckpt.get("callbacks", {}).get("Timer", {}).get("time_elapsed", {}).get("train")
        return (math.inf if seconds is None else float(seconds) / 60), int(ckpt.get("global_step", 0))
    except Exception as err:  # noqa: BLE001  (truncated by a kill mid-write, or not a Lightning checkpoint)
        raise ValueError(f"cannot read {last} ({type(err).__name__}): force=[{os.path.basename(stage_dir)}] starts "
                         f"the stage again (its old files are kept aside)") from None


def stage_finished(out: str, stage_dir: str, max_minutes: float, max_steps: int = -1) -> bool:
    """Whether a stage is done: its output exists and its last.ckpt has spent the budget (minutes, or `max_steps`
    when > 0). A budget raised after the stage stopped resumes it from last.ckpt; an output without a last.ckpt is
    done (but see `vae_trains_on`)."""
    if not os.path.exists(out):
        return False
    progress = stage_progress(stage_dir)
    return progress is None or progress[0] >= max_minutes or 0 < max_steps <= progress[1]


def vae_trains_on(cfg: DictConfig) -> bool:
    """Whether the vae stage would change an exported VAE: its budget is raised past what its last.ckpt spent, or it
    was taken as it is from `vae.init` (max_minutes=0, no last.ckpt) and now has minutes to train."""
    stage_dir = os.path.join(cfg.run_dir, "vae")
    out = os.path.join(stage_dir, "vae.safetensors")
    if not os.path.exists(out):
        return False
    progress = stage_progress(stage_dir)
    if progress is None:
        return bool(cfg.vae.init) and cfg.vae.max_minutes > 0
    return progress[0] < cfg.vae.max_minutes                       # the vae stage has no step budget


def _last_metric(stage_dir: str, name: str) -> float | None:
    """The last logged value of a metric in the stage's CSV log (for the model card)."""
    logs = sorted((os.path.join(d, "metrics.csv") for d, _, files in os.walk(stage_dir) if "metrics.csv" in files),
                  key=os.path.getmtime)
    if not logs:
        return None
    import csv
    with open(logs[-1]) as f:
        values = [row[name] for row in csv.DictReader(f) if row.get(name)]
    return float(values[-1]) if values else None


def _crop_loader(cache, tc: VAETrainConfig) -> DataLoader:
    """Shuffled batches of random crops of the renders (the vae and decoder stages)."""
    return DataLoader(ImageCropDataset(cache.images, tc.crop), batch_size=tc.batch_size, shuffle=True, drop_last=True)


def train_vae(cfg: DictConfig, cache, card: dict) -> str:
    stage_dir = os.path.join(cfg.run_dir, "vae")
    out = os.path.join(stage_dir, "vae.safetensors")
    if os.path.exists(out) and not vae_trains_on(cfg):  # force=[vae] has moved it aside (start_fresh)
        return out
    tc = vae_config(cfg)
    module = VAELitModule(arch_configs(cfg)[0], tc)
    write_arch(cfg, "vae")
    resuming = os.path.exists(os.path.join(stage_dir, "last.ckpt"))
    if cfg.vae.init and not resuming:
        warm_start(module, cfg.vae.init, ldm_model_config(cfg))
    if cfg.vae.init and cfg.vae.max_minutes == 0 and not resuming:   # take the VAE as it is
        os.makedirs(stage_dir, exist_ok=True)
        card["vae"] = {"init": cfg.vae.init, "minutes_last_call": 0.0}
    else:
        minutes = _fit(module, _crop_loader(cache, tc), stage_dir, cfg.vae.max_minutes)
        card["vae"] = {"minutes_last_call": round(minutes, 1), "train_psnr_last": _last_metric(stage_dir, "psnr"),
                       "init": cfg.vae.init, "equivariance_weight": tc.equivariance_weight,
                       "latent_blur_weight": tc.latent_blur_weight}
    save_file({k: v.contiguous() for k, v in module.vae.state_dict().items()}, out)
    return out


def train_decoder(cfg: DictConfig, cache, vae_path: str, card: dict) -> str:
    """The decoder fine-tune (`DecoderLitModule`: encoder frozen, so the latents and the UNet stay valid), starting
    from the VAE stage's weights; run_dir/decoder/vae.safetensors holds the whole VAE with its new decoder."""
    stage_dir = os.path.join(cfg.run_dir, "decoder")
    out = os.path.join(stage_dir, "vae.safetensors")
    if stage_finished(out, stage_dir, cfg.decoder.max_minutes):   # force=[decoder] has moved it aside
        return out
    tc = decoder_config(cfg)
    module = DecoderLitModule(arch_configs(cfg)[0], tc)
    write_arch(cfg, "decoder")
    if not os.path.exists(os.path.join(stage_dir, "last.ckpt")):
        module.vae.load_state_dict(load_file(vae_path))
    minutes = _fit(module, _crop_loader(cache, tc), stage_dir, cfg.decoder.max_minutes)
    card["decoder"] = {"minutes_last_call": round(minutes, 1), "train_psnr_last": _last_metric(stage_dir, "psnr")}
    save_file({k: v.contiguous() for k, v in module.vae.state_dict().items()}, out)
    return out


def export_vae_path(cfg: DictConfig) -> str:
    """The VAE the export ships: the decoder fine-tune's when the run has one, else the VAE stage's."""
    tuned = os.path.join(cfg.run_dir, "decoder", "vae.safetensors")
    return tuned if os.path.isfile(tuned) else os.path.join(cfg.run_dir, "vae", "vae.safetensors")


@torch.no_grad()
def encode_latents(vae_path: str, cache, stage_dir: str, name: str = "latents",
                   vae_sizes=presets.TOY_VAE) -> tuple[torch.Tensor, float]:
    """Posterior means of every training render and the scale factor that gives them unit variance."""
    out = os.path.join(stage_dir, f"{name}.safetensors")
    if os.path.exists(out) and os.path.getmtime(out) > os.path.getmtime(vae_path):
        saved = load_file(out)
        return saved["latents"], round_scale(saved["scale"])              # stored as float32: re-round
    from ldm.models.autoencoder import AutoencoderKL
    vae = AutoencoderKL(vae_sizes).eval()
    vae.load_state_dict(load_file(vae_path))
    chunks = [vae.encode(images_to_tensor(cache.images[i:i + 256]) * 2 - 1)
              for i in tqdm(range(0, len(cache), 256), desc=f"encode {name}", unit="chunk")]
    latents = torch.cat(chunks)                                             # [N, latent channels, 16, 16], unscaled
    scale = latent_scale_factor(latents)
    os.makedirs(stage_dir, exist_ok=True)
    save_file({"latents": latents.contiguous(), "scale": torch.tensor(scale)}, out)
    return latents, scale


INIT_COMPONENTS = {"vae": ("vae",), "ldm": ("unet", "text")}   # what `<stage>.init` takes from its file
INIT_HINT = "give a CompVis-layout file of the toy sizes, such as msbd/toy/weights/toy-ldm.safetensors"


def load_init(stage: str, path: str, config=None):
    """The networks `<stage>.init` warm-starts from, read strictly by ldm.checkpoint (one-line CheckpointError
    for a missing file, a foreign format, or keys and shapes that do not fit the toy config)."""
    from ldm.checkpoint import load_models
    return load_models(path, config or presets.toy_ldm_config(1.0), components=INIT_COMPONENTS[stage],
                       config_key=f"{stage}.init", hint=INIT_HINT)


def warm_start(module: pl.LightningModule, path: str, config=None) -> None:
    """Load weights from a CompVis-layout file: the VAE (`VAELitModule`), or the UNet and text encoder with their
    EMA copies (`LDMLitModule`). The optimiser starts fresh (a new warm-up) and the step count at 0."""
    if isinstance(module, VAELitModule):
        module.vae.load_state_dict(load_init("vae", path, config).vae.state_dict())
        return
    loaded = load_init("ldm", path, config)
    for source, parts in ((loaded.unet, (module.unet, module.ema_unet)),
                          (loaded.text_encoder, (module.text_encoder, module.ema_text))):
        for m in parts:
            m.load_state_dict(source.state_dict())


def single_cache(cfg: DictConfig):
    """The extra single-object renders of `data.n_single` (None when 0), cached per size range, and the name of
    their latents file."""
    if cfg.data.n_single == 0:
        return None, None
    lo, hi = (float(v) for v in cfg.data.single_sizes)
    tag = f"single_{lo:g}-{hi:g}"
    cache = render_cache(os.path.join(cfg.run_dir, "cache", tag), seed_range("train", cfg.data.n_single, SINGLE_OFFSET),
                         cfg.data.size, renderer=single_object_renderer((lo, hi)))
    return cache, f"latents_{tag}_{cfg.data.n_single}"


def train_ldm(cfg: DictConfig, caches: list, latents: torch.Tensor, scale: float, card: dict) -> str:
    stage_dir = os.path.join(cfg.run_dir, "ldm")
    out = os.path.join(stage_dir, "ldm.safetensors")
    if stage_finished(out, stage_dir, cfg.ldm.max_minutes, cfg.ldm.max_steps):   # force=[ldm] moved it aside
        return out
    tokenizer = CLIPTokenizer()
    token_ids = tokenizer([text for cache in caches for text in cache.captions])
    empty_ids = tokenizer([""])[0]
    tc = ldm_config(cfg)
    config = ldm_model_config(cfg)
    module = LDMLitModule(config.unet, config.text, tc)
    write_arch(cfg, "ldm")
    resuming = os.path.exists(os.path.join(stage_dir, "last.ckpt"))
    if cfg.ldm.init and not resuming:
        warm_start(module, cfg.ldm.init, config)
    text_source = clip_path(cfg) if cfg.ldm.freeze_text else None
    if text_source and not resuming:                    # SD v1: the frozen text tower of a contrastive CLIP
        from msbd.toy.clip_model import clip_text_state
        module.load_text_encoder(clip_text_state(load_file(text_source)))
    weights = None
    if tc.object_weight:
        weights = torch.cat([object_cells(c.images, c.images.shape[1] // latents.shape[-1]) for c in caches])
    dataset = LatentCaptionDataset(latents * scale, token_ids, empty_ids, tc.caption_dropout, weights)
    loader = DataLoader(dataset, batch_size=tc.batch_size, shuffle=True, drop_last=True)
    minutes = _fit(module, loader, stage_dir, cfg.ldm.max_minutes, tc.max_steps)
    save_file({k: v.contiguous() for k, v in ema_export_state(module.state_dict()).items()}, out)
    card["ldm"] = {"minutes_last_call": round(minutes, 1), "train_loss_last": _last_metric(stage_dir, "loss"),
                   "init": cfg.ldm.init, "object_weight": tc.object_weight, "offset_noise": tc.offset_noise,
                   "text_encoder": f"text tower of {text_source}, frozen" if text_source else "trained jointly"}
    return out


def export_copy(cfg: DictConfig, trained: str, shipped: str) -> str:
    """Copy a stage's trained file into export_dir under the shipped file's name (not over the shipped file itself
    when export_dir points elsewhere)."""
    os.makedirs(cfg.export_dir, exist_ok=True)
    target = os.path.join(cfg.export_dir, os.path.basename(shipped))
    shutil.copyfile(trained, target)
    return target


def _text_link(cfg: DictConfig, state: dict[str, torch.Tensor], export_dir: str) -> dict[str, str]:
    """Metadata linking the exported file to the toy CLIP in export_dir for its text encoder, when the trained text
    encoder is exactly that CLIP's text tower in fp16 (`ldm.freeze_text`); then the file need not store a second
    copy. The CLIP (`clip_path(cfg)`) is copied into export_dir when it came from elsewhere. Empty (the tensors stay)
    otherwise."""
    if not cfg.ldm.freeze_text:
        return {}
    from msbd.toy.clip_model import clip_text_state
    source = clip_path(cfg)
    tower = clip_text_state(load_file(source))
    text = {k.removeprefix(TEXT_PREFIX): v for k, v in state.items() if k.startswith(TEXT_PREFIX)}
    if set(text) != set(tower) or any(not torch.equal(text[k].half(), tower[k].half()) for k in tower):
        return {}
    target = os.path.join(export_dir, os.path.basename(presets.CLIP_WEIGHTS))
    if os.path.abspath(source) != os.path.abspath(target):
        shutil.copyfile(source, target)
    return {TEXT_FROM_KEY: os.path.basename(target), TEXT_SHA_KEY: sha256_file(target)}


def export(cfg: DictConfig, vae_path: str, ldm_state: dict[str, torch.Tensor], scale: float,
           export_dir: str | None = None) -> None:
    """Write the shipped files into export_dir (cfg.export_dir by default): one CompVis-layout fp16 safetensors for
    the VAE (read from vae_path) + the ldm stage's UNet and text encoder (`ldm_state`, CompVis names), without the
    text encoder when it is the toy CLIP's frozen text tower (then metadata names the CLIP file it is read from),
    and its config."""
    export_dir = export_dir or cfg.export_dir
    os.makedirs(export_dir, exist_ok=True)
    state = {f"first_stage_model.{k}": v for k, v in load_file(vae_path).items()}
    state.update(ldm_state)
    metadata = _text_link(cfg, state, export_dir)
    if metadata:
        state = {k: v for k, v in state.items() if not k.startswith(TEXT_PREFIX)}
    save_file({k: v.half().contiguous() for k, v in state.items()},
              os.path.join(export_dir, os.path.basename(presets.LDM_WEIGHTS)), metadata=metadata or None)
    with open(os.path.join(export_dir, os.path.basename(presets.LDM_CONFIG)), "w") as f:
        json.dump(ldm_model_config(cfg, scale).to_dict(), f, indent=2)


def _write_card(cfg: DictConfig, card: dict) -> None:
    path = os.path.join(cfg.run_dir, "card.json")
    previous = json.load(open(path)) if os.path.exists(path) else {}
    previous.update(card)
    with open(path, "w") as f:
        json.dump(previous, f, indent=2)


@hydra.main(version_base="1.3", config_path="../configs", config_name="train_toy")
def main(cfg: DictConfig) -> None:
    if cfg.dry_run:                                     # reached only past precheck (Hydra's own flags)
        return
    if cfg.snapshot:                                    # reached only past precheck (Hydra's own flags)
        try:
            validate(cfg)
            print(f"wrote {write_snapshot(cfg)}")
        except ValueError as err:
            _exit_with(err)
        return
    torch.set_num_threads(cfg.threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    os.makedirs(cfg.run_dir, exist_ok=True)
    for stage in sorted(forced_stages(cfg)):            # force: from scratch, the old files kept aside
        aside = start_fresh(cfg, stage)
        if aside:
            print(f"force: {stage} starts from scratch; its previous files are in {aside}")
    card: dict = {"config": OmegaConf.to_container(cfg, resolve=True)}
    if "clip" in cfg.stages:                            # first: the ldm stage takes its text tower
        from msbd.toy.clip_model import train_clip
        card["clip"] = train_clip(os.path.join(cfg.run_dir, "clip"), max_minutes=cfg.clip.max_minutes, seed=cfg.seed,
                                  config=clip_config(cfg))
        export_copy(cfg, os.path.join(cfg.run_dir, "clip", "clip.safetensors"), presets.CLIP_WEIGHTS)
    if {"vae", "ldm", "decoder"} & set(cfg.stages):     # the clip and sr stages render their own data
        cache = render_cache(os.path.join(cfg.run_dir, "cache"), seed_range("train", cfg.data.n_train), cfg.data.size)
        vae_path = train_vae(cfg, cache, card)
        vae_cfg = arch_configs(cfg)[0]
        latents, scale = encode_latents(vae_path, cache, os.path.join(cfg.run_dir, "ldm"), vae_sizes=vae_cfg)
        card["latent_scale"] = scale
        if "ldm" in cfg.stages:
            caches, (singles, name) = [cache], single_cache(cfg)
            if singles is not None:              # encoded by the same VAE; the scale stays the main set's
                extra, _ = encode_latents(vae_path, singles, os.path.join(cfg.run_dir, "ldm"), name, vae_cfg)
                caches, latents = [cache, singles], torch.cat([latents, extra])
            card["data_single"] = {"n": cfg.data.n_single, "sizes": [float(v) for v in cfg.data.single_sizes]}
            train_ldm(cfg, caches, latents, scale, card)
        if "decoder" in cfg.stages:                     # after the UNet: its latents come from the VAE's encoder
            train_decoder(cfg, cache, vae_path, card)
        ldm_path = os.path.join(cfg.run_dir, "ldm", "ldm.safetensors")
        if {"ldm", "decoder"} & set(cfg.stages) and os.path.isfile(ldm_path):
            export(cfg, export_vae_path(cfg), load_file(ldm_path), scale)
    if "sr" in cfg.stages:
        from msbd.toy.sr_model import train_sr
        card["sr"] = train_sr(os.path.join(cfg.run_dir, "sr"), max_minutes=cfg.sr.max_minutes, seed=cfg.seed,
                              config=sr_config(cfg))
        export_copy(cfg, os.path.join(cfg.run_dir, "sr", "sr.safetensors"), presets.SR_WEIGHTS)
    _write_card(cfg, card)
    from msbd.toy.card import write_model_card
    command = " ".join(["python scripts/train_toy.py", *sys.argv[1:]])
    print(f"wrote {write_model_card(cfg.run_dir, cfg.export_dir, command)}")


if __name__ == "__main__":
    precheck(sys.argv[1:])
    main()
