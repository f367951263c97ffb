"""CLIP tokenizer parity with transformers' CLIPTokenizer built offline from vocab.json + merges.txt.

transformers 5 no longer ships the slow (Python) CLIPTokenizer that SD v1 used; its tokenizers-backed class
normalises with NFC where the slow one ran `ftfy.fix_text`. We therefore give the reference `ftfy.fix_text(prompt)`,
which is what the slow tokenizer did first; the rest of the pipeline (whitespace collapse, lowercase, regex split,
byte-level BPE, BOS/EOS, truncation, padding with <|endoftext|>) is the reference's own.
"""
import gzip
import json
import warnings

import ftfy
import pytest
import torch
import transformers
from transformers.convert_slow_tokenizer import bytes_to_unicode as hf_bytes_to_unicode

from ldm.models.tokenizer import CLIPTokenizer, clean_text, default_bpe_path

BOS, EOS = 49406, 49407
LONG_PROMPT = " ".join(f"word{i}" for i in range(60))  # 60 x (word + digits) = far more than 75 tokens
PROMPTS = [
    "a photo of a cat",
    "A Photo Of A CAT",
    "",
    "   ",
    "Hello, World!!! How's it going?",
    "an astronaut riding a horse on mars, 4k, trending on artstation",
    "3.14159 is π and 1/2 is ½",
    "price: $1,299.99 (incl. 20% VAT)",
    "café, naïve, Ångström, Straße",
    "don’t stop — “quoted” text…",
    "fish &amp; chips &lt;3",
    "ﬁne ligature and ＦＵＬＬＷＩＤＴＨ letters",
    "emoji: 🐱🎨✨ ok",
    "日本語のテキスト 中文 한국어",
    "tabs\tand\nnewlines   and  spaces",
    "we've, they'll, I'm, she'd, it's",
    "hyphen-ated under_score slash/es",
    "<|endoftext|> inside the prompt",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    LONG_PROMPT,
]


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer()


def _write_hf_files(directory) -> None:
    """vocab.json and merges.txt from open_clip's BPE file, built the way OpenAI's CLIP builds its vocabulary."""
    with gzip.open(default_bpe_path(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1:49152 - 256 - 2 + 1]
    symbols = list(hf_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def _hf_tokenizer(directory) -> transformers.CLIPTokenizer:
    _write_hf_files(directory)
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    lines = (directory / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    merges = [tuple(line.split()) for line in lines if line]
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>")


def test_parity_with_transformers(tokenizer, tmp_path):
    hf = _hf_tokenizer(tmp_path)
    assert hf.vocab_size == tokenizer.vocab_size == 49408
    ref = hf([ftfy.fix_text(p) for p in PROMPTS], padding="max_length", max_length=77, truncation=True,
             return_tensors="pt").input_ids
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = tokenizer(PROMPTS)
    assert ids.dtype == torch.long and ids.shape == (len(PROMPTS), 77)
    mismatched = [p for p, a, b in zip(PROMPTS, ids, ref) if not torch.equal(a, b)]
    assert not mismatched


def test_empty_prompt(tokenizer):
    ids = tokenizer([""])
    assert ids.tolist() == [[BOS] + [EOS] * 76]
    assert tokenizer.count_tokens("") == 0


def test_long_prompt_is_truncated_keeps_eos_and_warns(tokenizer):
    full = tokenizer.encode(LONG_PROMPT)
    assert tokenizer.count_tokens(LONG_PROMPT) == len(full) > 75
    with pytest.warns(UserWarning, match="truncated"):
        ids, truncated = tokenizer.tokenize(["a cat", LONG_PROMPT])
    assert truncated == [False, True]
    assert ids[1].tolist() == [BOS] + full[:75] + [EOS]
    with pytest.warns(UserWarning, match="truncated"):
        tokenizer([LONG_PROMPT])


def test_exactly_75_tokens_is_not_truncated(tokenizer):
    prompt = " ".join(["cat"] * 75)  # "cat</w>" is one token
    assert tokenizer.count_tokens(prompt) == 75
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids, truncated = tokenizer.tokenize(prompt)
    assert truncated == [False]
    assert ids[0, 0] == BOS and ids[0, -1] == EOS and (ids[0, 1:-1] == ids[0, 1]).all()


def test_padding_is_eos_and_short_prompt_layout(tokenizer):
    ids = tokenizer(["a photo of a cat"])[0]
    n = tokenizer.count_tokens("a photo of a cat")
    assert n == 5
    assert ids[0] == BOS and ids[n + 1] == EOS
    assert (ids[n + 1:] == EOS).all()
    assert tokenizer.decode(ids[: n + 2].tolist()) == "<|startoftext|>a photo of a cat <|endoftext|>"


def test_text_cleaning(tokenizer):
    assert clean_text("  Don’t\tSTOP &amp;  go  ") == "don't stop & go"
    assert tokenizer("ﬁsh &amp; CHIPS").tolist() == tokenizer("fish & chips").tolist()


def test_vocabulary_matches_reference_files(tokenizer, tmp_path):
    _write_hf_files(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert tokenizer.encoder == vocab  # every entry, including the special-token ids 49406 / 49407
    assert tokenizer.encoder["<|startoftext|>"] == BOS and tokenizer.encoder["<|endoftext|>"] == EOS


def test_invalid_prompts(tokenizer):
    with pytest.raises(ValueError, match="strings"):
        tokenizer(["ok", 3])
