"""Resumable, time-boxed Lightning training shared by the toy models (reranking CLIP, ×4 SR).

`fit_resumable` keeps a `last.ckpt` in the run directory (every few minutes and at the end) and resumes from it
when present. `max_minutes` is the *total* training-time budget of the run: Lightning's Timer stores the elapsed
time in the checkpoint, so a resumed run only gets what is left. `max_steps` bounds the run as well and sets the
length of the learning-rate schedule (`warmup_cosine`).
"""
from __future__ import annotations

import math
import os
from datetime import timedelta

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

LAST_CKPT = "last.ckpt"


def warmup_cosine(warmup_steps: int, max_steps: int) -> "callable":
    """LR multiplier: linear warm-up over `warmup_steps`, then a cosine decay to 0 at `max_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def adamw_with_schedule(module: pl.LightningModule, params: list[dict], lr: float, warmup_steps: int,
                        max_steps: int) -> dict:
    """`configure_optimizers` output: AdamW over parameter groups and a per-step warm-up/cosine schedule."""
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), eps=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, max_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def fit_resumable(module: pl.LightningModule, loader: torch.utils.data.DataLoader, out_dir: str,
                  max_minutes: float, max_steps: int, log_every_n_steps: int = 10,
                  checkpoint_minutes: float = 2.0) -> pl.Trainer:
    """Train `module` on CPU until `max_steps` or `max_minutes` (total over resumes); resume from out_dir/last.ckpt,
    which is written every `checkpoint_minutes` and at the end."""
    if max_minutes <= 0 or max_steps <= 0:
        raise ValueError(f"max_minutes and max_steps must be positive, got {max_minutes}, {max_steps}")
    os.makedirs(out_dir, exist_ok=True)
    checkpoint = ModelCheckpoint(dirpath=out_dir, save_last=True, save_top_k=0,
                                 train_time_interval=timedelta(minutes=checkpoint_minutes))
    checkpoint.CHECKPOINT_NAME_LAST = "last"
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, max_time=timedelta(minutes=max_minutes),
        callbacks=[checkpoint], logger=CSVLogger(out_dir, name="logs"), log_every_n_steps=log_every_n_steps,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=out_dir,
    )
    last = os.path.join(out_dir, LAST_CKPT)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=last if os.path.exists(last) else None)
    # Lightning's on_train_end writes last.ckpt as well; this makes sure the resume point is the state exported
    # now (a CLIP resume once restarted 159 steps before the exported weights).
    trainer.save_checkpoint(last)
    return trainer
