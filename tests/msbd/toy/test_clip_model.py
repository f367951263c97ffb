"""The toy reranking CLIP: registered open_clip config, offline loading, scores, loss and a short overfit."""
import socket
import warnings

import numpy as np
import open_clip
import pytest
import torch

from msbd.toy import clip_model
from msbd.toy.clip_model import (TOY_CLIP_NAME, ClipLitModule, clip_scores, contrastive_loss, create_toy_clip,
                                 encode_text_trimmed, export_clip, load_reranker, register_toy_clip,
                                 retrieval_accuracy, tokenize)

CAPTIONS = ["a red circle", "a blue square on a striped background", "a green star and a yellow triangle",
            "a plain background", "a striped background", "a magenta star", "an orange circle and a cyan square",
            "a purple triangle on a striped background"]


@pytest.fixture
def offline(monkeypatch):
    """No network: HF hub offline and every socket connection refused."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(n)]


def test_config_registers_within_budget():
    register_toy_clip()
    register_toy_clip()                                     # idempotent
    assert TOY_CLIP_NAME in open_clip.list_models()
    config = open_clip.get_model_config(TOY_CLIP_NAME)
    assert config["vision_cfg"]["image_size"] == 64 and config["text_cfg"]["context_length"] == 77
    assert config["text_cfg"]["vocab_size"] == 49408        # the real CLIP BPE vocabulary
    model = create_toy_clip()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params <= 3_000_000                            # <= 6 MB in fp16
    assert model.token_embedding.weight.shape == (49408, config["text_cfg"]["width"])


def test_trimmed_text_encoding_is_exact():
    model = create_toy_clip().eval()
    tokens = open_clip.get_tokenizer(TOY_CLIP_NAME)(CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(encode_text_trimmed(model, tokens), model.encode_text(tokens),
                                   rtol=1e-5, atol=1e-5)


def test_duplicate_captions_are_positives_of_each_other():
    torch.manual_seed(0)
    image_features, text_features = torch.randn(4, 8), torch.randn(4, 8)
    tokens = torch.tensor([[1, 2], [1, 2], [3, 4], [5, 6]])  # items 0 and 1 share a caption
    swapped = text_features[[1, 0, 2, 3]]
    scale = torch.tensor(2.0)
    loss = contrastive_loss(image_features, text_features, scale, tokens)
    torch.testing.assert_close(contrastive_loss(image_features, swapped, scale, tokens), loss)
    # with all captions distinct it is CLIP's loss: mean of the two cross-entropies against the diagonal
    distinct = torch.arange(8).view(4, 2)
    logits = scale.exp() * torch.nn.functional.normalize(image_features, dim=-1) @ \
        torch.nn.functional.normalize(text_features, dim=-1).T
    expected = 0.5 * (torch.nn.functional.cross_entropy(logits, torch.arange(4))
                      + torch.nn.functional.cross_entropy(logits.T, torch.arange(4)))
    torch.testing.assert_close(contrastive_loss(image_features, text_features, scale, distinct), expected)


def test_training_steps_overfit_a_tiny_batch():
    torch.manual_seed(0)
    module = ClipLitModule(lr=2e-3, warmup_steps=1, max_steps=1000)
    optimizer = module.configure_optimizers()["optimizer"]
    colours = torch.rand(8, 3, 1, 1)
    images = (colours + 0.1 * torch.randn(8, 3, 64, 64) - 0.45) / 0.27       # roughly normalised
    tokens = open_clip.get_tokenizer(TOY_CLIP_NAME)(CAPTIONS)
    module.log = lambda *args, **kwargs: None                                 # no trainer attached
    losses = []
    for step in range(12):
        loss = module.training_step((images, tokens), step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        module.on_train_batch_end(None, None, step)
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert module.model.logit_scale.item() <= np.log(100) + 1e-6


def test_export_reload_gives_identical_scores(tmp_path, offline):
    model = create_toy_clip().eval()
    path = str(tmp_path / "clip.safetensors")
    export_clip(model, path)
    loaded, preprocess, tokenizer = load_reranker(TOY_CLIP_NAME, path)
    model.half().float()                                   # the weights as stored (fp16)
    images = _images(3)
    scores = clip_scores(loaded, preprocess, tokenizer, images, "a red circle on a striped background")
    expected = clip_scores(model, preprocess, tokenizer, images, "a red circle on a striped background")
    assert scores.shape == (3,)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)
    assert scores.abs().max() <= 100.0 + 1e-4              # 100 x cosine


def test_clip_scores_truncate_long_prompts_with_warning():
    model = create_toy_clip().eval()
    preprocess = open_clip.image_transform(64, is_train=False)
    tokenizer = open_clip.get_tokenizer(TOY_CLIP_NAME)
    long_prompt = " ".join(["a red circle and a blue square"] * 20)      # ~140 tokens
    with pytest.warns(UserWarning, match="truncated"):
        scores = clip_scores(model, preprocess, tokenizer, _images(2), long_prompt)
    assert torch.isfinite(scores).all()
    with pytest.warns(UserWarning, match="truncated"):
        tokens = tokenize(tokenizer, [long_prompt])
    assert tokens.shape == (1, 77) and tokens[0, -1] == tokenizer.eot_token_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # a short prompt does not warn
        clip_scores(model, preprocess, tokenizer, _images(1), "a red circle")


def test_vit_l_14_goes_through_the_same_call(tmp_path, monkeypatch):
    weights = tmp_path / "ViT-L-14.safetensors"
    weights.write_bytes(b"not really")
    calls = []

    def fake_create(name, **kwargs):
        calls.append((name, kwargs))
        return create_toy_clip(), None, "preprocess"
    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake_create)
    load_reranker("ViT-L-14", str(weights))
    load_reranker(TOY_CLIP_NAME, str(weights))
    assert calls[0] == ("ViT-L-14", {"pretrained": str(weights), "force_quick_gelu": True, "weights_only": True})
    assert calls[1] == (TOY_CLIP_NAME, {"pretrained": str(weights), "force_quick_gelu": False, "weights_only": True})
    with pytest.raises(ValueError, match="reranker"):
        load_reranker("ViT-B-32", str(weights))
    with pytest.raises(ValueError, match="not found"):
        load_reranker(TOY_CLIP_NAME, str(tmp_path / "missing.safetensors"))


def test_torchscript_archives_are_detected(tmp_path):
    path = str(tmp_path / "jit.pt")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    assert clip_model._is_torchscript_archive(path)
    torch.save({"w": torch.zeros(1)}, str(tmp_path / "sd.pt"))
    assert not clip_model._is_torchscript_archive(str(tmp_path / "sd.pt"))


class _FakeClip(torch.nn.Module):
    """Image 'features' are given directly; text features are one-hot in the caption index."""

    def encode_image(self, images):
        return images

    def encode_text(self, tokens):
        return torch.nn.functional.one_hot(torch.arange(len(tokens)), len(tokens)).float()


def test_retrieval_counts_equal_strings_as_hits():
    captions = ["a red circle", "a blue star", "a plain background", "a plain background"]
    retrieved = [1, 1, 3, 2]                       # image 0 wrong; images 2 and 3 swap equal strings
    images = torch.nn.functional.one_hot(torch.tensor(retrieved), 4).float()
    accuracy = retrieval_accuracy(_FakeClip(), images, captions, open_clip.get_tokenizer(TOY_CLIP_NAME))
    assert accuracy == pytest.approx(0.75)


def test_text_tower_maps_onto_the_ldm_text_encoder():
    """clip_text_state: ldm's CLIPTextEncoder with the toy CLIP's text weights gives open_clip's per-token hidden
    states (after ln_final) exactly, as SD v1's FrozenCLIPEmbedder uses CLIP's."""
    from ldm.models.clip_text import CLIPTextEncoder
    from msbd.toy import presets
    from msbd.toy.clip_model import clip_text_state
    torch.manual_seed(0)
    model = create_toy_clip().eval()
    for p in model.parameters():                # break any symmetry of the initialisation (q/k/v order, LN)
        p.data.add_(0.05 * torch.randn_like(p))
    encoder = CLIPTextEncoder(presets.TOY_CLIP_TEXT).eval()
    encoder.load_state_dict(clip_text_state(model.state_dict()))   # strict: every name, every shape
    tokens = open_clip.get_tokenizer(TOY_CLIP_NAME)(CAPTIONS)
    with torch.no_grad():
        x = model.token_embedding(tokens) + model.positional_embedding
        expected = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        torch.testing.assert_close(encoder(tokens), expected, rtol=1e-5, atol=1e-5)


def test_toy_text_encoder_has_the_toy_clip_text_sizes():
    from msbd.toy import presets
    register_toy_clip()
    text_cfg = open_clip.get_model_config(TOY_CLIP_NAME)["text_cfg"]
    t = presets.TOY_CLIP_TEXT
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads) == (
        text_cfg["width"], text_cfg["layers"], text_cfg["heads"])
    assert (t.vocab_size, t.max_position_embeddings) == (text_cfg["vocab_size"], text_cfg["context_length"])
    assert t.intermediate_size == 4 * text_cfg["width"] and t.hidden_act == "gelu"   # open_clip's MLP ratio, GELU
    assert presets.toy_arch({}, t)[1].context_dim == t.hidden_size
