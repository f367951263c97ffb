"""Training of the toy reranking CLIP (`msbd-toy-clip`), apart from `msbd.toy.clip_model` so that loading the
reranker for an edit does not import pytorch_lightning (~3 s of every run's start-up)."""
from __future__ import annotations

import logging
import os
from dataclasses import asdict

import open_clip
import pytorch_lightning as pl
import torch

from msbd.toy.clip_model import (
    MAX_LOGIT_SCALE,
    RENDER_SIZE,
    TOY_CLIP_NAME,
    ClipTrainConfig,
    _write_json,
    caption_dataset,
    contrastive_loss,
    create_toy_clip,
    encode_text_trimmed,
    eval_clip_retrieval,
    export_clip,
    load_reranker,
)
from msbd.toy.data import render_cache, seed_range
from msbd.toy.fit import adamw_with_schedule, fit_resumable


class ClipLitModule(pl.LightningModule):
    """Contrastive training of `msbd-toy-clip`. A batch is (images `[B, 3, S, S]` normalised, tokens `[B, 77]`)."""

    def __init__(self, lr: float = 1e-3, weight_decay: float = 0.1, warmup_steps: int = 100,
                 max_steps: int = 2000):
        super().__init__()
        self.save_hyperparameters()
        self.model = create_toy_clip()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, tokens = batch
        loss = contrastive_loss(self.model.encode_image(images), encode_text_trimmed(self.model, tokens),
                                self.model.logit_scale, tokens)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/logit_scale", self.model.logit_scale.exp())
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def configure_optimizers(self) -> dict:
        # open_clip's rule: no weight decay on gains, biases and the temperature.
        named = list(self.model.named_parameters())
        exclude = [p for n, p in named if p.ndim < 2 or "ln" in n or "bias" in n or "logit_scale" in n]
        include = [p for n, p in named if not (p.ndim < 2 or "ln" in n or "bias" in n or "logit_scale" in n)]
        groups = [{"params": include, "weight_decay": self.hparams.weight_decay},
                  {"params": exclude, "weight_decay": 0.0}]
        return adamw_with_schedule(self, groups, self.hparams.lr, self.hparams.warmup_steps, self.hparams.max_steps)


def train_clip(out_dir: str, max_minutes: float, seed: int, config: ClipTrainConfig = ClipTrainConfig(),
               cache_dir: str | None = None) -> dict:
    """Train `msbd-toy-clip` (resumable from out_dir/last.ckpt), export out_dir/clip.safetensors (fp16), evaluate.

    Returns (and writes to out_dir/metrics.json) the export path, steps done and held-out top-1 retrieval.
    """
    # 1. data: a render cache of the training scenes, resized once to the model input
    pl.seed_everything(seed, workers=True)
    cache_dir = os.path.join(out_dir, "cache") if cache_dir is None else cache_dir
    cache = render_cache(cache_dir, seed_range("train", config.n_train), RENDER_SIZE)
    module = ClipLitModule(lr=config.lr, weight_decay=config.weight_decay, warmup_steps=config.warmup_steps,
                           max_steps=config.max_steps)
    dataset = caption_dataset(cache.images, cache.captions, module.model.visual.image_size[0],
                              open_clip.get_tokenizer(TOY_CLIP_NAME))
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True)
    # 2. fit (time-boxed, resumable)
    trainer = fit_resumable(module, loader, out_dir, max_minutes, config.max_steps)
    # 3. export fp16 and evaluate the exported weights (as they will be used)
    path = os.path.join(out_dir, "clip.safetensors")
    export_clip(module.model, path)
    model, _, _ = load_reranker(TOY_CLIP_NAME, path)
    metrics = {"weights": path, "steps": trainer.global_step, "config": asdict(config), "seed": seed,
               "top1_retrieval": eval_clip_retrieval(model, config.eval_n)}
    _write_json(os.path.join(out_dir, "metrics.json"), metrics)
    logging.getLogger(__name__).info("toy CLIP: %s", metrics)
    return metrics
