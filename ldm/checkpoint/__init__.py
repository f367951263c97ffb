"""Stable Diffusion checkpoints -> our UNet, VAE and CLIP text encoder, safely and strictly.

* `read_state_dict(path)`: a CompVis `.ckpt` (zip or legacy torch format, read by a restricted unpickler that
  never runs code from the file), a `.safetensors` with the same keys, or a diffusers folder (mapped to the same
  CompVis names), as one flat dict.
* `split_components`, `check_keys`, `check_schedule`: per-network dicts, strict key/shape checks with the likely
  cause of a mismatch (SD 2.x, inpainting, EMA-only), stored alpha-bar against ours.
* `load_models(path, config)`: all of the above, then the networks built on CPU, eval mode, no gradients.
* `python -m ldm.checkpoint inspect FILE` / `keys CONFIG`: see `ldm/checkpoint/__main__.py`.

The CompVis prefixes (`PREFIXES`) are defined once, in `ldm.checkpoint.components`.
"""
from ldm.checkpoint.components import (
    COMPONENTS, EMA_PREFIX, PREFIXES, SCHEDULE_KEYS, expected_keys, partition, split_components,
)
from ldm.checkpoint.diagnose import check_keys, check_schedule, guess_family, likely_causes
from ldm.checkpoint.errors import CheckpointError
from ldm.checkpoint.formats import FORMATS, detect_format, load_pickled, read_state_dict
from ldm.checkpoint.load import SD_V1_HINT, LDMModels, check_exists, load_models

__all__ = [
    "COMPONENTS", "EMA_PREFIX", "FORMATS", "PREFIXES", "SCHEDULE_KEYS", "SD_V1_HINT", "CheckpointError",
    "LDMModels", "check_exists", "check_keys", "check_schedule", "detect_format", "expected_keys", "guess_family",
    "likely_causes", "load_models", "load_pickled", "partition", "read_state_dict", "split_components",
]
