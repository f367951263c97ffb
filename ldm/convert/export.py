"""Our modules as diffusers / transformers ones: the key mappings of ldm.convert run in reverse.

The reverse mapping is not written a second time. For each component a reference model of the target class is
built with our config's layout; the forward conversion (`unet_from_diffusers`, `vae_from_diffusers`,
`clip_text_from_transformers`) is applied to the reference's own state dict, which tells, for every diffusers /
transformers key, the key of ours it becomes; that table is inverted, and our tensors are loaded into the reference
(reshaped to its shapes, e.g. 1x1 conv kernels into Linear weights) with `strict=True`. So a mapping bug shows up
in both directions, and the exported model gives our outputs (tests/ldm/test_convert_export.py).

Used by the evidence benchmark's diffusers peer (`StableDiffusionInpaintPipeline` on the toy weights). diffusers and
transformers are imported only inside the functions.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ldm.convert.clip_text import clip_text_from_transformers
from ldm.convert.unet import diffusers_unet_kwargs, unet_from_diffusers
from ldm.convert.vae import vae_from_diffusers


def reverse_state_dict(ours: dict[str, torch.Tensor], target: torch.nn.Module,
                       forward: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A state dict for `target` (a diffusers / transformers module) holding our tensors, by inverting `forward`
    (their keys -> ours) on the target's own keys. Every key of ours must be used exactly once."""
    theirs = target.state_dict()
    names = list(theirs)
    # tag every tensor of the target with its key's index (a broadcast view: no memory), let `forward` rename and
    # reshape the tags, and read back which of our keys each index became
    mapped = forward({k: torch.tensor(float(i)).expand(theirs[k].shape) for i, k in enumerate(names)})
    back = {our_key: names[int(tag.reshape(-1)[0])] for our_key, tag in mapped.items()}
    missing = sorted(set(ours) - set(back))
    unused = sorted(set(back) - set(ours))
    if missing or unused:
        raise ValueError(f"reverse_state_dict: ours has {len(missing)} keys the target lacks (e.g. {missing[:3]}), "
                         f"the target {len(unused)} that ours lacks (e.g. {unused[:3]})")
    out = {}
    for our_key, their_key in back.items():
        value, shape = ours[our_key], theirs[their_key].shape
        if value.numel() != shape.numel():
            raise ValueError(f"reverse_state_dict: {our_key} {tuple(value.shape)} does not fit {their_key} {tuple(shape)}")
        out[their_key] = value.detach().reshape(shape).clone()
    return out


def _load(target: torch.nn.Module, ours: torch.nn.Module, forward) -> torch.nn.Module:
    state = reverse_state_dict(ours.state_dict(), target, forward)
    extra = {k: v for k, v in target.state_dict().items() if k not in state}      # buffers we compute ourselves
    target.load_state_dict({**extra, **state}, strict=True)
    param = next(ours.parameters())
    target = target.to(param.device)
    if param.dtype != torch.float32:            # (diffusers warns about any dtype given to .to(), even float32)
        target = target.to(param.dtype)
    return target.eval().requires_grad_(False)


def export_unet(unet: torch.nn.Module, sample_size: int = 64):
    """A `diffusers.UNet2DConditionModel` with the weights of our `UNetModel`; sample_size: the native latent side
    (64 for SD v1, 16 toy; diffusers' pipelines read their default size from it)."""
    import diffusers
    config = unet.config
    target = diffusers.UNet2DConditionModel(**diffusers_unet_kwargs(config), sample_size=sample_size)
    return _load(target, unet, lambda sd: unet_from_diffusers(sd, config))


def export_vae(vae: torch.nn.Module, scale_factor: float):
    """A `diffusers.AutoencoderKL` with the weights of our `AutoencoderKL` (its scaling_factor = our latent scale)."""
    import diffusers
    c = vae.config
    n = len(c.ch_mult)
    target = diffusers.AutoencoderKL(
        in_channels=c.in_channels, out_channels=c.out_ch, latent_channels=c.z_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(c.ch * m for m in c.ch_mult), layers_per_block=c.num_res_blocks,
        norm_num_groups=c.norm_num_groups, scaling_factor=scale_factor)
    return _load(target, vae, vae_from_diffusers)


def export_text_encoder(text_encoder: torch.nn.Module):
    """A `transformers.CLIPTextModel` with the weights of our `CLIPTextEncoder` (the transformers layout)."""
    import transformers
    c = text_encoder.config
    if getattr(c, "layout", "transformers") != "transformers":
        raise ValueError(f"export_text_encoder: only the transformers layout is exported, not {c.layout!r}")
    target = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=c.vocab_size, max_position_embeddings=c.max_position_embeddings, hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, layer_norm_eps=c.layer_norm_eps, hidden_act=c.hidden_act,
        attn_implementation="eager"))
    return _load(target, text_encoder, clip_text_from_transformers)
