"""A diffusers-format folder loads through our own path and gives the reference models' outputs.

Tiny random diffusers `UNet2DConditionModel`, `AutoencoderKL` and transformers `CLIPTextModel`, shaped as the
"tiny-test" config, are written with `save_pretrained` (safetensors; the text encoder also as a torch-pickled
pytorch_model.bin, as transformers 4.x wrote it, read by the restricted unpickler) into unet/, vae/ and text_encoder/. `load_models(folder)` maps them with
`ldm.convert` and loads them strictly; all outputs must match the references in fp32 (max error relative to the
reference's largest value <= 1e-5).
"""
import pytest
import torch
from _parity_helpers import diffusers_vae, perturb

from ldm.checkpoint import CheckpointError, expected_keys, load_models, read_state_dict
from ldm.config import TINY_TEST
from ldm.convert.unet import diffusers_unet_kwargs

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

CONFIG = TINY_TEST
REL_TOL = 1e-5




def _reference_unet():
    return perturb(diffusers.UNet2DConditionModel(**diffusers_unet_kwargs(CONFIG.unet)))


def _reference_vae():
    return diffusers_vae(CONFIG.vae)


def _reference_text():
    c = CONFIG.text
    return perturb(transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=c.vocab_size, max_position_embeddings=c.max_position_embeddings, hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, layer_norm_eps=c.layer_norm_eps, hidden_act=c.hidden_act,
        attn_implementation="eager",
    )))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    refs = {"unet": _reference_unet(), "vae": _reference_vae(), "text_encoder": _reference_text()}
    root = tmp_path_factory.mktemp("diffusers")
    for sub, model in refs.items():
        model.save_pretrained(root / sub, safe_serialization=True)
    return root, refs


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


def test_folder_maps_to_exactly_the_expected_compvis_keys(folder):
    root, _ = folder
    state_dict, fmt = read_state_dict(root, CONFIG)
    assert fmt == "diffusers"
    assert {k: list(v.shape) for k, v in state_dict.items()} == expected_keys(CONFIG)


def test_folder_outputs_match_references(folder):
    root, refs = folder
    models = load_models(root, CONFIG)
    assert models.format == "diffusers"
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(2, 4, 16, 16, generator=gen)
    image = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    ids = torch.randint(0, CONFIG.text.vocab_size, (2, 77), generator=gen)
    context = torch.randn(2, 77, CONFIG.unet.context_dim, generator=gen)
    t = torch.tensor([1, 981])
    with torch.inference_mode():
        errors = {
            "unet": _rel_err(models.unet(z, t, context), refs["unet"](z, t, encoder_hidden_states=context).sample),
            "vae.encode": _rel_err(models.vae.encode(image), refs["vae"].encode(image).latent_dist.mean),
            "vae.decode": _rel_err(models.vae.decode(z), refs["vae"].decode(z).sample),
            "text": _rel_err(models.text_encoder(ids), refs["text_encoder"](ids).last_hidden_state),
        }
    assert max(errors.values()) <= REL_TOL, errors


def test_pickled_bin_text_encoder(folder, tmp_path):
    """A pytorch_model.bin (torch.save of the state dict; transformers 5 writes only safetensors) goes through
    the restricted unpickler and gives the same outputs."""
    _, refs = folder
    bin_root = tmp_path / "bin"
    (bin_root / "text_encoder").mkdir(parents=True)
    torch.save(refs["text_encoder"].state_dict(), bin_root / "text_encoder" / "pytorch_model.bin")
    text = load_models(bin_root, CONFIG, components=("text",)).text_encoder
    ids = torch.arange(77)[None]
    with torch.inference_mode():
        assert _rel_err(text(ids), refs["text_encoder"](ids).last_hidden_state) <= REL_TOL
    with pytest.raises(CheckpointError, match="the file has no unet weights"):
        load_models(bin_root, CONFIG)


def test_folder_of_another_size_is_explained(folder):
    root, _ = folder
    with pytest.raises(CheckpointError, match="unet: weights do not map onto the config's unet"):
        load_models(root, "sd-v1")
    with pytest.raises(CheckpointError, match=r"does not fit config 'sd-v1': vae: \d+ missing .* with another shape"):
        load_models(root, "sd-v1", components=("vae",))      # only vae/ is read: the UNet mapping is not attempted
