"""CLIP text encoder parity with transformers' CLIPTextModel (random weights via our key mapping and safetensors)."""
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from ldm.convert.clip_text import clip_text_from_transformers
from ldm.models.clip_text import IGNORED_KEYS, CLIPTextConfig, CLIPTextEncoder

TINY = CLIPTextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
REL_TOL = 1e-5
BOS, EOS = 49406, 49407


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _hf_model(cfg: CLIPTextConfig) -> transformers.CLIPTextModel:
    torch.manual_seed(0)
    hf_cfg = transformers.CLIPTextConfig(
        vocab_size=cfg.vocab_size, max_position_embeddings=cfg.max_position_embeddings,
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        layer_norm_eps=cfg.layer_norm_eps, hidden_act=cfg.hidden_act,
        attn_implementation="eager",  # the plain softmax(QK^T)V path, independent of SDPA
    )
    model = transformers.CLIPTextModel(hf_cfg).eval()
    with torch.no_grad():  # make layer norms and biases non-trivial
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def _ours_from(hf_state: dict, cfg: CLIPTextConfig, tmp_path) -> CLIPTextEncoder:
    path = tmp_path / "text.safetensors"
    save_file(clip_text_from_transformers(hf_state), str(path))
    ours = CLIPTextEncoder(cfg).eval()
    ours.load_state_dict(load_file(str(path)), strict=True)
    return ours


def _prompt_ids(batch: int) -> torch.Tensor:
    """BOS, random content of varying length, EOS, then 49407 padding: the layout the tokenizer produces."""
    g = torch.Generator().manual_seed(2)
    ids = torch.full((batch, 77), EOS, dtype=torch.long)
    for row, length in enumerate(torch.randint(0, 76, (batch,), generator=g).tolist()):
        ids[row, 0] = BOS
        ids[row, 1:1 + length] = torch.randint(0, BOS, (length,), generator=g)
    return ids


def _check_parity(cfg: CLIPTextConfig, tmp_path) -> None:
    hf = _hf_model(cfg)
    ours = _ours_from(hf.state_dict(), cfg, tmp_path)
    ids = _prompt_ids(3)
    with torch.no_grad():
        ref = hf(input_ids=ids).last_hidden_state
        out = ours(ids)
    assert out.shape == (3, 77, cfg.hidden_size)
    assert _rel_err(out, ref) <= REL_TOL


def test_parity_with_transformers_tiny(tmp_path):
    _check_parity(TINY, tmp_path)


@pytest.mark.slow
def test_parity_with_transformers_sd_v1(tmp_path):
    _check_parity(CLIPTextConfig(), tmp_path)


def test_mapping_handles_4x_and_5x_layouts():
    state_5x = _hf_model(TINY).state_dict()
    assert not any(k.startswith("text_model.") for k in state_5x)  # transformers 5 layout, as installed
    state_4x = {"text_model." + k: v for k, v in state_5x.items()}
    state_4x["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    ours_keys = CLIPTextEncoder(TINY).state_dict().keys()
    for state in (state_5x, state_4x):
        mapped = clip_text_from_transformers(state)
        assert mapped.keys() == ours_keys
        assert torch.equal(mapped["text_model.final_layer_norm.weight"], state_5x["final_layer_norm.weight"])


def test_mapping_rejects_foreign_or_mixed_keys():
    state = _hf_model(TINY).state_dict()
    with pytest.raises(ValueError, match="unexpected key"):
        clip_text_from_transformers({**state, "text_projection.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="mix"):
        clip_text_from_transformers({**state, "text_model.final_layer_norm.bias": torch.zeros(64)})


def test_position_ids_buffer_is_not_part_of_our_state():
    ours = CLIPTextEncoder(TINY)
    assert not set(IGNORED_KEYS) & set(ours.state_dict())
    # An SD-v1 style state (4.x names + the buffer) loads strictly once IGNORED_KEYS are dropped.
    sd_v1_state = {**ours.state_dict(), "text_model.embeddings.position_ids": torch.arange(77)[None]}
    ours.load_state_dict({k: v for k, v in sd_v1_state.items() if k not in IGNORED_KEYS}, strict=True)


def test_causal_mask_and_no_padding_mask():
    ours = CLIPTextEncoder(TINY).eval()
    ids = _prompt_ids(1)
    changed = ids.clone()
    changed[0, 40] = 123
    with torch.no_grad():
        a, b = ours(ids), ours(changed)
    torch.testing.assert_close(a[:, :40], b[:, :40], rtol=0, atol=0)  # earlier positions never see later ones
    assert not torch.allclose(a[:, 40:], b[:, 40:])  # pad positions after it do attend to it


def test_sd_v1_parameter_count_and_names():
    with torch.device("meta"):
        model = CLIPTextEncoder(CLIPTextConfig())
    assert sum(p.numel() for p in model.parameters()) == 123_060_480
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["text_model.embeddings.token_embedding.weight"] == (49408, 768)
    assert shapes["text_model.embeddings.position_embedding.weight"] == (77, 768)
    assert shapes["text_model.encoder.layers.11.self_attn.out_proj.bias"] == (768,)
    assert shapes["text_model.encoder.layers.11.mlp.fc1.weight"] == (3072, 768)
    assert shapes["text_model.final_layer_norm.weight"] == (768,)
    assert "text_model.encoder.layers.12.layer_norm1.weight" not in shapes


def test_bfloat16_runs():
    ours = CLIPTextEncoder(TINY).eval()
    ids = _prompt_ids(2)
    with torch.no_grad():
        ref = ours(ids)
        low = ours.to(torch.bfloat16)(ids)
    assert low.dtype == torch.bfloat16
    assert _rel_err(low.float(), ref) < 0.05


def test_invalid_inputs():
    ours = CLIPTextEncoder(TINY)
    with pytest.raises(ValueError, match="integer input_ids"):
        ours(torch.zeros(1, 77))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ours(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        CLIPTextConfig(hidden_size=64, num_attention_heads=5)
    with pytest.raises(ValueError, match="hidden_act"):
        CLIPTextConfig(hidden_act="relu")
