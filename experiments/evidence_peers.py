"""The peers of the evidence benchmark (issue 21 item 4), on the same weights as ours.

* `DiffusersPeer`: what a diffusers user would do. diffusers' own `StableDiffusionInpaintPipeline` with
  `padding_mask_crop` (crop around the mask, edit at the model's native size, paste back: A1111's "only masked"),
  running the toy models moved into diffusers / transformers classes by `ldm.convert.export`. The UNet has 4 input
  channels, for which that pipeline blends the noised source latent outside the (latent, nearest-resized) mask
  after every step ("legacy" blended inpainting) instead of feeding mask and masked image to a 9-channel UNet.
  Prompts are encoded by the exported transformers text encoder from our tokenizer's ids (no tokenizer files can
  be downloaded here) and passed as `prompt_embeds`.
* `authors_quirks(config)`: ours with every `msbd.reference_quirks` switch on, i.e. the authors' code's behaviour.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from msbd.config import MSBDConfig, ReferenceQuirks
from msbd.models import ModelBundle


def authors_quirks(config: MSBDConfig) -> MSBDConfig:
    """`config` with every reference_quirks switch set to reproduce the authors' code."""
    quirks = ReferenceQuirks(background_level="reference", clean_final=False, sdedit_ref_alpha0=True, esrgan_bgr=True,
                             crop_rule="reference", drop_redundant_tiles=False, alpha_quantize=True,
                             truncate_uint8=True, same_seed_per_tile=True)
    return dataclasses.replace(config, reference_quirks=quirks)


def quirk_fields_all_switched(config: MSBDConfig) -> list[str]:
    """The reference_quirks fields that still have their default (fixed) value: [] when all are switched."""
    default = ReferenceQuirks()
    return [f.name for f in dataclasses.fields(ReferenceQuirks)
            if getattr(config.reference_quirks, f.name) == getattr(default, f.name)]


class DiffusersPeer:
    """diffusers' StableDiffusionInpaintPipeline on a bundle's weights; `edit` has run_edit's signature."""

    def __init__(self, bundle: ModelBundle, pad_frac: float = 0.1) -> None:
        import diffusers

        from ldm.convert.export import export_text_encoder, export_unet, export_vae
        self.bundle, self.pad_frac = bundle, pad_frac
        self.text = export_text_encoder(bundle.text_encoder)
        scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        self.pipe = diffusers.StableDiffusionInpaintPipeline(
            vae=export_vae(bundle.vae, bundle.scale_factor), text_encoder=self.text, tokenizer=None,
            unet=export_unet(bundle.unet, bundle.native_size // bundle.latent_factor), scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        self.pipe.set_progress_bar_config(disable=True)

    @torch.no_grad()
    def _embed(self, prompt: str) -> torch.Tensor:
        return self.text(self.bundle.tokenizer([prompt])).last_hidden_state

    def edit(self, image: np.ndarray, mask: np.ndarray, prompt: str, config: MSBDConfig, bundle: ModelBundle
             ) -> np.ndarray:
        """image uint8 [H, W, 3], mask [H, W] (>= 0.5 = edit) -> the edited image, uint8 [H, W, 3]."""
        from PIL import Image
        fs = config.first_stage
        binary = np.asarray(mask) >= 0.5
        rows, cols = np.nonzero(binary)
        pad = round(self.pad_frac * max(np.ptp(rows) + 1, np.ptp(cols) + 1))     # ours: margin 1.2 = 10% a side
        out = self.pipe(prompt_embeds=self._embed(prompt), negative_prompt_embeds=self._embed(""),
                        image=Image.fromarray(image), mask_image=Image.fromarray(binary.astype(np.uint8) * 255),
                        height=fs.size, width=fs.size, padding_mask_crop=pad, strength=1.0,
                        num_inference_steps=fs.steps, guidance_scale=fs.guidance, eta=fs.eta,
                        generator=torch.Generator().manual_seed(config.seed)).images[0]
        return np.asarray(out.convert("RGB"))
