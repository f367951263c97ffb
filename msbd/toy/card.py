"""MODEL_CARD.md of the embedded toy models: data, command, time, sizes and metrics, written from the training run.

`write_model_card(run_dir, export_dir)` reads what `scripts/train_toy.py` left in `run_dir` (card.json, the
Lightning checkpoints' step counts, the CLIP / SR metrics files) and the exported safetensors, and writes
`export_dir/MODEL_CARD.md`. The quality bars are filled in by `python scripts/run.py +experiment=toy_quality
toy_quality.update_card=true`, which replaces the section between the QUALITY markers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import safe_open

QUALITY_BEGIN, QUALITY_END = "<!-- QUALITY:BEGIN -->", "<!-- QUALITY:END -->"
PREFIXES = {"VAE (AutoencoderKL)": "first_stage_model.", "UNet (UNetModel)": "model.diffusion_model.",
            "text encoder (CLIPTextEncoder)": "cond_stage_model.transformer."}


def _count(path: Path, prefix: str = "") -> int:
    total = 0
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            if key.startswith(prefix):
                shape = f.get_slice(key).get_shape()
                n = 1
                for s in shape:
                    n *= s
                total += n
    return total


def _text_from(path: Path) -> str | None:
    """The CLIP file an LDM file takes its text encoder from (metadata `msbd_text_from`), or None."""
    from ldm.checkpoint.formats import TEXT_FROM_KEY
    with safe_open(str(path), "pt") as f:
        return (f.metadata() or {}).get(TEXT_FROM_KEY)


def _text_tower_count(clip_file: Path) -> int:
    """Parameters of the text encoder the loader builds from a CLIP file's text tower."""
    from safetensors.torch import load_file

    from ldm.convert.clip_text import clip_text_from_open_clip
    return sum(v.numel() for v in clip_text_from_open_clip(load_file(str(clip_file))).values())


def _progress(ckpt: Path) -> tuple[int | None, float | None]:
    """(steps, total training minutes over all resumes) from a stage's Lightning last.ckpt."""
    if not ckpt.exists():
        return None, None
    import torch
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    timer = state.get("callbacks", {}).get("Timer", {}).get("time_elapsed", {})
    minutes = round(timer["train"] / 60, 1) if "train" in timer else None
    return int(state.get("global_step", 0)), minutes


def _architecture(config_file: Path) -> list[str]:
    """The card's sizes section, read from the exported LDMConfig (toy-ldm.json); [] without a complete one."""
    c = _read(config_file)
    if not {"unet", "vae", "text", "image_size"} <= c.keys():
        return []
    unet, vae, text = c["unet"], c["vae"], c["text"]
    widths = " / ".join(str(unet["model_channels"] * m) for m in unet["channel_mult"])
    factor = 2 ** (len(vae["ch_mult"]) - 1)
    heads = (f"heads of {unet['num_head_channels']} channels" if unet.get("num_head_channels", -1) > 0
             else f"{unet['num_heads']} heads")
    return ["## Sizes", "",
            f"* VAE: factor {factor}, {vae['embed_dim']} latent channels, {c['image_size']} px native "
            f"({c['image_size'] // factor} x {c['image_size'] // factor} latents).",
            f"* UNet: widths {widths}, {unet['num_res_blocks']} ResBlocks per level, cross-attention at downsampling "
            f"factors {unet['attention_resolutions']} ({heads}), GroupNorm with {unet['norm_num_groups']} groups.",
            f"* Text encoder: {text['num_hidden_layers']} layers of width {text['hidden_size']}.", ""]


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _stage_rows(card_text: str) -> dict[str, str]:
    """The rows of an existing card's stage table, by stage name."""
    rows = {}
    for line in card_text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] in ("vae", "ldm", "decoder", "clip", "sr"):
            rows[cells[0]] = line
    return rows


def write_model_card(run_dir: str | os.PathLike, export_dir: str | os.PathLike, command: str) -> Path:
    """Write export_dir/MODEL_CARD.md; a stage with nothing in run_dir (trained elsewhere, e.g. before a fresh
    clone) keeps its row of the stage table from the existing card, and then the card's data lines that this run
    cannot fill and its command (this run's command is appended with "; then"). Measured quality figures are kept.
    """
    run, out = Path(run_dir), Path(export_dir)
    path = out / "MODEL_CARD.md"
    old = path.read_text() if path.exists() else ""
    previous_rows = _stage_rows(old)
    card = _read(run / "card.json")
    cfg = card.get("config", {})
    frozen_text = bool(cfg.get("ldm", {}).get("freeze_text", False))
    diffusion = "UNet" if frozen_text else "UNet + text encoder"        # what the latent data trained
    if "latent_scale" not in card and (out / "toy-ldm.json").exists():    # the VAE was not trained in run_dir
        card["latent_scale"] = _read(out / "toy-ldm.json").get("scale_factor", "n/a")
    ldm_file, clip_file, sr_file = out / "toy-ldm.safetensors", out / "toy-clip.safetensors", out / "toy-sr-x4.safetensors"
    clip_m, sr_m = _read(run / "clip" / "metrics.json"), _read(run / "sr" / "metrics.json")
    lines = ["# Model card: the embedded toy world", "",
             "Tiny models of the Stable Diffusion v1 classes (`ldm/`) and of the helpers MSBD uses (an open_clip "
             "reranker, a Real-ESRGAN-layout x4 RRDBNet), trained from scratch on this project's procedural scenes "
             "(`msbd/toy/scenes.py`) on a 2-core CPU. They exist so that the whole pipeline runs, and every claim of "
             "the paper can be measured, without downloadable weights. They know nothing but this toy world.", "",
             "## Files", "", "| file | what | parameters | size |", "|---|---|---|---|"]
    text_from = _text_from(ldm_file) if ldm_file.exists() else None
    for name, prefix in PREFIXES.items():
        if not ldm_file.exists():
            continue
        if text_from and prefix == PREFIXES["text encoder (CLIPTextEncoder)"]:
            tower = _text_tower_count(out / text_from)
            lines.append(f"| `{ldm_file.name}` | {name}: not stored, read from the text tower of `{text_from}` "
                         f"(metadata `msbd_text_from`) | {tower:,} | |")
        else:
            lines.append(f"| `{ldm_file.name}` | {name}, CompVis key layout, fp16 | {_count(ldm_file, prefix):,} | |")
    for f, what in ((ldm_file, "VAE and UNet" if text_from else "all three above"),
                    (clip_file, "reranking CLIP `msbd-toy-clip` (open_clip), fp16"),
                    (sr_file, "x4 RRDBNet (Real-ESRGAN layout, loads with spandrel), fp16")):
        if f.exists():
            lines.append(f"| `{f.name}` | {what} | {_count(f):,} | {f.stat().st_size / 2**20:.1f} MiB |")
    lines += ["", f"`toy-ldm.json` holds the LDMConfig; latent scale factor {card.get('latent_scale', 'n/a')} "
              "(1 / std of the training latents, the way SD's 0.18215 was obtained).", "",
              *_architecture(out / "toy-ldm.json"),
              "## Data", "",
              *(["* Text encoder: the text tower of the CLIP below (`clip_model.clip_text_state`), frozen while the "
                 "UNet trains, as SD v1 uses CLIP ViT-L/14's (`ldm.freeze_text`)."]
                if frozen_text else []),
              f"* VAE and {diffusion}: {cfg.get('data', {}).get('n_train', 'n/a')} scenes rendered at "
              f"{cfg.get('data', {}).get('size', 'n/a')} px from training seeds 0..N-1 (0 to 3 objects of 4 shapes in "
              "8 colours on textured backgrounds), captions from `scenes.caption`, 10% empty captions for "
              "classifier-free guidance; the VAE on random 64 px crops.",
              *([f"* {diffusion} also: {card['data_single']['n']} single-object scenes (training seeds "
                 f"500000 on, object sizes {card['data_single']['sizes'][0]:g}-{card['data_single']['sizes'][1]:g} "
                 "of the short side; `data.n_single`, `data.single_sizes`), encoded by the same VAE."]
                if card.get("data_single", {}).get("n") else []),
              f"* CLIP: {clip_m.get('config', {}).get('n_train', 'n/a')} training renders and captions (symmetric "
              "InfoNCE).",
              f"* SR: HR renders at sizes {sr_m.get('config', {}).get('sizes', 'n/a')} with the Real-ESRGAN "
              "first-order degradation (blur, bicubic x4, noise, JPEG)"
              + (f", a share {sr_m['config']['clean_prob']} of plain bicubic x4 (`clean_prob`)"
                 if sr_m.get("config", {}).get("clean_prob") else "")
              + (f", a share {sr_m['config']['edge_prob']} of HR patches centred on object outlines (`edge_prob`)"
                 if sr_m.get("config", {}).get("edge_prob") else "") + ", pixel L1.",
              "* Every evaluation uses held-out seeds (10^6 and up), never seen in training.", "",
              "## Command and time", "", f"    {command}", "",
              f"Trained on a CPU with {cfg.get('threads', 'n/a')} threads (`threads`); the minutes below are wall "
              "clock there, summed over resumes.", "",
              "| stage | steps | training minutes (total) | last metric |", "|---|---|---|---|"]
    for stage, metrics, key, label in (("vae", card.get("vae", {}), "train_psnr_last", "train_psnr_last"),
                                       ("ldm", card.get("ldm", {}), "train_loss_last", "train_loss_last"),
                                       ("decoder", card.get("decoder", {}), "train_psnr_last", "train_psnr_last"),
                                       ("clip", clip_m, "top1_retrieval", "held-out top-1 retrieval"),
                                       ("sr", sr_m, "gain_db", "held-out PSNR gain over bicubic (dB)")):
        steps, minutes = _progress(run / stage / "last.ckpt")
        value = metrics.get(key)
        if metrics.get("steps", steps) is None and minutes is None and value is None:
            if stage in previous_rows:                  # not trained in this run directory: keep the shipped row
                lines.append(previous_rows[stage])
            if stage in previous_rows or stage == "decoder":     # the optional stage: no row when never run
                continue
        lines.append(f"| {stage} | {metrics.get('steps', steps)} | {minutes} | {label}: "
                     f"{'n/a' if value is None else f'{value:.3f}'} |")
    for stage in ("vae", "ldm"):
        if card.get(stage, {}).get("init"):
            lines += ["", f"The {stage} stage was warm-started from `{card[stage]['init']}`: its steps and minutes above "
                      "count only this run, the earlier training of those weights is not included."]
    if card.get("decoder") or "decoder" in previous_rows:
        lines += ["", "The VAE's decoder was then fine-tuned with its encoder frozen (stage `decoder`, as Stability's "
                  "sd-vae-ft-mse): the latents the UNet was trained on are unchanged."]
    if card.get("vae", {}).get("equivariance_weight"):
        lines += ["", f"The VAE loss includes the scale-equivariance term with weight "
                  f"{card['vae']['equivariance_weight']} (`vae.equivariance_weight`)."]
    if card.get("vae", {}).get("latent_blur_weight"):
        lines += ["", f"The VAE loss includes the latent-blur term with weight {card['vae']['latent_blur_weight']} "
                  "(`vae.latent_blur_weight`: the 3x3-blurred latent must decode to the image too)."]
    ldm_cfg = cfg.get("ldm", {})
    if "ldm" in card and (ldm_cfg.get("snr_gamma") or ldm_cfg.get("max_steps")):
        lines += ["", f"The UNet was trained with min-SNR weighting gamma {ldm_cfg.get('snr_gamma')} (`ldm.snr_gamma`) "
                  f"and a cosine LR decay from step {ldm_cfg.get('decay_start')} to {ldm_cfg.get('max_steps')} "
                  "(`ldm.decay_start`, `ldm.max_steps`; 0 = off)."]
    if card.get("ldm", {}).get("object_weight"):
        lines += ["", f"The UNet's eps loss weighs latent cells near objects 1 + {card['ldm']['object_weight']} "
                  "times (`ldm.object_weight`)."]
    if card.get("ldm", {}).get("offset_noise"):
        lines += ["", f"The UNet was trained with offset noise of std {card['ldm']['offset_noise']} "
                  "(`ldm.offset_noise`: a per-sample, per-channel constant added to eps)."]
    lines += ["", f"Training resumes from `{cfg.get('run_dir', 'train_runs/toy')}/<stage>/last.ckpt` when the command "
              "runs again; budgets are totals.", "",
              "## Quality bars", "", QUALITY_BEGIN,
              "Not measured yet: `python scripts/run.py +experiment=toy_quality toy_quality.update_card=true`.",
              QUALITY_END, ""]
    kept = [stage for stage, row in previous_rows.items() if row in lines]
    if kept:                                    # a partial run: keep what the card said about the other stages
        old_lines = old.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("* ") and "n/a" in line:
                same = [o for o in old_lines if o.startswith(line.split(":")[0] + ":")]
                lines[i] = same[0] if same else line
        commands = [o for o in old_lines if o.startswith("    python ")]
        if commands:
            lines[lines.index(f"    {command}")] = f"{commands[0]}; then {command}"
    text = "\n".join(lines)
    if QUALITY_BEGIN in old:                                   # keep measured quality figures
        text = replace_quality(text, old.split(QUALITY_BEGIN)[1].split(QUALITY_END)[0].strip("\n"))
    out.mkdir(parents=True, exist_ok=True)              # a run of stages=[vae] into a new export_dir exports nothing
    path.write_text(text)
    return path


def replace_quality(card_text: str, section: str) -> str:
    """The card with the text between the QUALITY markers replaced by `section`."""
    if QUALITY_BEGIN not in card_text or QUALITY_END not in card_text:
        raise ValueError("MODEL_CARD.md has no QUALITY markers; regenerate it with scripts/train_toy.py")
    head, rest = card_text.split(QUALITY_BEGIN, 1)
    tail = rest.split(QUALITY_END, 1)[1]
    return f"{head}{QUALITY_BEGIN}\n{section.strip(chr(10))}\n\n{QUALITY_END}{tail}"
