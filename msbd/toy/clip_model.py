"""The toy world's reranking CLIP: an open_clip model config, its loader, CLIP scores, training and evaluation.

MSBD reranks candidate edits by CLIP similarity with the prompt (ViT-L/14 in the paper). The toy world swaps in
`msbd-toy-clip`, a ~2.9 M parameter open_clip model (config in `assets/msbd-toy-clip.json`) trained
contrastively (Radford et al. 2021, symmetric InfoNCE with a learnable temperature) on scene renders and their
captions. Both models load through the same call, `open_clip.create_model_and_transforms(name, pretrained=file)`,
from local files only. Scores are 100 x cosine similarity, as the reference's `logits_per_image` with ViT-L/14
(whose learned logit scale is 100).
"""
from __future__ import annotations

import json
import math
import os
import warnings
import zipfile
from dataclasses import dataclass

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from PIL import Image
from safetensors.torch import save_file

from ldm.convert.clip_text import clip_text_from_open_clip
from msbd.toy.data import images_to_tensor, render_cache, resize_area, seed_range

TOY_CLIP_NAME = "msbd-toy-clip"
TOY_CLIP_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", f"{TOY_CLIP_NAME}.json")
CLIP_SCORE_SCALE = 100.0    # score = 100 * cosine, the fixed scale of OpenAI ViT-L/14's logits
RENDER_SIZE = 128           # training and evaluation scenes are rendered here, then resized to the model input
MAX_LOGIT_SCALE = math.log(100.0)   # open_clip's clamp of the learnable temperature
_TRAINING = ("ClipLitModule", "train_clip")   # in msbd.toy.clip_train: pytorch_lightning is imported for training only


def __getattr__(name: str):
    if name in _TRAINING:
        from msbd.toy import clip_train
        return getattr(clip_train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_toy_clip() -> None:
    """Add `msbd-toy-clip` to open_clip's model registry (idempotent)."""
    if TOY_CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(TOY_CLIP_CONFIG)


def create_toy_clip() -> open_clip.CLIP:
    """A randomly initialised `msbd-toy-clip` (fp32, CPU)."""
    register_toy_clip()
    # The same class and arguments as open_clip.create_model(TOY_CLIP_NAME), without its "no weights" warning.
    return open_clip.CLIP(**open_clip.get_model_config(TOY_CLIP_NAME))


def _is_torchscript_archive(path: str) -> bool:
    """OpenAI's original `ViT-L-14.pt` is a TorchScript zip (it holds a `code/` folder)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_reranker(name: str, weights_path: str) -> tuple[torch.nn.Module, object, object]:
    """(model in eval mode, preprocess, tokenizer) for `ViT-L-14` (OpenAI weights) or `msbd-toy-clip`.

    `weights_path` is a local file (.safetensors, a state-dict .pt/.bin, or OpenAI's TorchScript .pt); nothing is
    ever downloaded. OpenAI's weights were trained with QuickGELU, which open_clip only switches on for its
    'openai' tag, so it is forced here for a local ViT-L-14 file.
    """
    if name not in ("ViT-L-14", TOY_CLIP_NAME):
        raise ValueError(f"reranker must be 'ViT-L-14' or {TOY_CLIP_NAME!r}, got {name!r}")
    if not os.path.isfile(weights_path):
        raise ValueError(f"reranker weights not found: {weights_path}")
    register_toy_clip()
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=weights_path, force_quick_gelu=name == "ViT-L-14",
        # TorchScript archives cannot be read with weights_only=True; torch.jit.load runs no pickled code.
        weights_only=not _is_torchscript_archive(weights_path),
    )
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    """Token ids `[B, context_length]`; texts over the context length are truncated with a warning.

    (The reference uses `clip.tokenize`, which raises on such prompts.)
    """
    for text in texts:
        n_tokens = len(tokenizer.encode(text)) + 2      # + start and end of text
        if n_tokens > tokenizer.context_length:
            warnings.warn(f"prompt has {n_tokens} tokens, more than CLIP's {tokenizer.context_length}; "
                          f"truncated: {text[:60]!r}...", stacklevel=3)
    return tokenizer(texts)


def _to_pil(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"images must be PIL images or uint8 [H, W, 3] arrays, got {array.dtype} {array.shape}")
    return Image.fromarray(array)


@torch.no_grad()
def clip_scores(model: torch.nn.Module, preprocess, tokenizer, images: list, prompt: str) -> torch.Tensor:
    """100 x cosine similarity between each image and `prompt`: float `[N]` (the reference's logits_per_image)."""
    if not images:
        raise ValueError("clip_scores needs at least one image")
    param = next(model.parameters())
    pixels = torch.stack([preprocess(_to_pil(im)) for im in images]).to(param.device, param.dtype)
    tokens = tokenize(tokenizer, [prompt]).to(param.device)
    image_features = F.normalize(model.encode_image(pixels).float(), dim=-1)     # [N, D]
    text_features = F.normalize(model.encode_text(tokens).float(), dim=-1)      # [1, D]
    return CLIP_SCORE_SCALE * (image_features @ text_features.T)[:, 0]


def images_to_clip_input(image: torch.Tensor, size: int) -> torch.Tensor:
    """`[B, 3, H, W]` in [0, 1] -> normalised CLIP input `[B, 3, size, size]` (bicubic-AA resize, OpenAI mean/std).

    A tensor version of open_clip's preprocess for square images, used in training and evaluation.
    """
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    if image.shape[-2:] != (size, size):
        image = resize_area(image, size).clamp(0, 1)
    return (image - mean) / std


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                     tokens: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) over a batch where identical captions count as positives of each other.

    Combinatorial captions repeat inside a batch (e.g. two empty striped backgrounds); plain InfoNCE would push
    such pairs apart. The target of each row is uniform over the items with the same token ids.
    """
    logits = logit_scale.exp() * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
    same = (tokens[:, None, :] == tokens[None, :, :]).all(dim=-1).float()     # [B, B], symmetric
    targets = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def encode_text_trimmed(model: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens)` computed on the used prefix of the 77 positions only (training speed-up).

    Exact, because the text transformer is causal and pools at the end-of-text token: positions after the
    longest caption (zero padding) never influence the pooled feature. Toy captions use ~20 of the 77 positions.
    """
    length = int((tokens != 0).sum(dim=1).max())
    text = tokens[:, :length]                                                   # [B, L]
    x = model.token_embedding(text) + model.positional_embedding[:length]      # [B, L, W]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = text_global_pool(x, text, model.text_pool_type)                        # [B, W]
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


def export_clip(model: torch.nn.Module, path: str) -> None:
    """Save the open_clip state dict in fp16 safetensors (loadable by `load_reranker`)."""
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, path, metadata={"format": "open_clip", "model": TOY_CLIP_NAME})


def clip_text_state(clip_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text tower of an open_clip state dict as a state dict of `ldm.models.clip_text.CLIPTextEncoder`.

    Stable Diffusion v1 conditions its UNet on the frozen text transformer of a contrastively trained CLIP; the
    toy world can do the same with `msbd-toy-clip` (`presets.TOY_CLIP_TEXT` has its text tower's sizes). Token and
    position embeddings, the pre-LN blocks (the fused q/k/v projection split in three) and the final LayerNorm
    are kept; the projection and the logit scale are CLIP-only and dropped. Values are returned in float32.
    """
    return {k: v.float().contiguous() for k, v in clip_text_from_open_clip(clip_state).items()}


# ---------------------------------------------------------------------------------------------------------------
# Data, evaluation, training
# ---------------------------------------------------------------------------------------------------------------

def caption_dataset(images_u8: np.ndarray, captions: list[str], size: int, tokenizer) -> torch.utils.data.Dataset:
    """A tensor dataset of (normalised images `[3, size, size]`, tokens `[77]`), resized once in chunks."""
    resized = torch.cat([
        (resize_area(images_to_tensor(images_u8[i:i + 512]), size).clamp(0, 1) * 255).round().byte()
        for i in range(0, len(images_u8), 512)])
    return _NormalisedImages(resized, tokenize(tokenizer, captions), size)


class _NormalisedImages(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, tokens: torch.Tensor, size: int):
        self.images, self.tokens, self.size = images, tokens, size    # uint8 [N, 3, S, S], long [N, 77]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return images_to_clip_input(self.images[i:i + 1].float() / 255, self.size)[0], self.tokens[i]


@torch.no_grad()
def retrieval_accuracy(model: torch.nn.Module, images: torch.Tensor, captions: list[str], tokenizer) -> float:
    """Top-1 image -> caption retrieval among all given captions; a hit when the best caption equals the true one.

    images: normalised `[N, 3, S, S]`. Duplicate captions count as the same caption (compared as strings).
    """
    image_features = F.normalize(model.encode_image(images), dim=-1)
    text_features = F.normalize(model.encode_text(tokenize(tokenizer, captions)), dim=-1)
    best = (image_features @ text_features.T).argmax(dim=1)
    return float(np.mean([captions[j] == captions[i] for i, j in enumerate(best.tolist())]))


def eval_clip_retrieval(model: torch.nn.Module, n: int = 200, offset: int = 0, cache_dir: str | None = None
                        ) -> float:
    """Top-1 caption retrieval on `n` held-out scenes (seeds from `HELDOUT_SEEDS`, rendered at 128 px)."""
    if n < 2:
        raise ValueError(f"retrieval needs at least 2 scenes, got {n}")
    was_training = model.training
    model.eval()
    seeds = seed_range("heldout", n, offset)
    if cache_dir is None:
        from msbd.toy.data import render_seed
        rendered = [render_seed(s, RENDER_SIZE, RENDER_SIZE) for s in seeds]
        images_u8, captions = np.stack([r[0] for r in rendered]), [r[1] for r in rendered]
    else:
        cache = render_cache(cache_dir, seeds, RENDER_SIZE)
        images_u8, captions = cache.images, cache.captions
    size = model.visual.image_size[0]
    images = images_to_clip_input(images_to_tensor(images_u8), size)
    accuracy = retrieval_accuracy(model, images, captions, open_clip.get_tokenizer(TOY_CLIP_NAME))
    model.train(was_training)
    return accuracy


@dataclass(frozen=True)
class ClipTrainConfig:
    n_train: int = 20000          # training scenes (seeds 0 .. n_train-1), rendered once at 128 px
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    max_steps: int = 2000         # schedule length; training also stops at max_minutes
    eval_n: int = 200             # held-out scenes for the retrieval score written to metrics.json


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
