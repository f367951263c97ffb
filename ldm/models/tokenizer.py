"""The CLIP byte-level BPE tokenizer as Stable Diffusion v1 calls it, working offline from open_clip's vocabulary file.

SD v1 tokenises with HF's slow `CLIPTokenizer` (ALGORITHM.md section 12) using `max_length=77, truncation=True,
padding="max_length"`: text cleaning (`ftfy.fix_text`, whitespace collapse, lowercase), a regex split into words,
numbers and punctuation runs, byte-level BPE with `</w>` word ends, then
`[BOS=49406] + up to 75 tokens + [EOS=49407]`, padded with **49407** (open_clip's own tokenizer pads with 0).
`ftfy.fix_text` also decodes HTML entities (its `unescape_html="auto"`), which is the only HTML handling HF does.

The vocabulary is rebuilt from open_clip's `bpe_simple_vocab_16e6.txt.gz` the way OpenAI's CLIP builds it: the 256
byte symbols, the same with `</w>`, the 48,894 merges in rank order, then `<|startoftext|>` and `<|endoftext|>`.
It is the same vocabulary as the `openai/clip-vit-large-patch14` vocab.json / merges.txt.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import regex
import torch

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
CONTEXT_LENGTH = 77
_NUM_MERGES = 49152 - 256 - 2  # merges OpenAI's CLIP uses from the file (the rest of the file is unused)
_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
# Words, contractions, single digits and runs of other symbols (OpenAI CLIP / HF slow CLIPTokenizer).
_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters (no whitespace/control).

    The printable bytes map to themselves and come first; the others are shifted past 255. The insertion order
    is the order of the first 256 vocabulary entries.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = [b for b in range(256) if b not in mapping]
    mapping.update({b: chr(256 + n) for n, b in enumerate(shifted)})
    return mapping


def default_bpe_path() -> Path:
    """open_clip's packaged BPE file, found without importing open_clip (which is slow to import)."""
    spec = importlib.util.find_spec("open_clip")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / _VOCAB_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"CLIPTokenizer: {_VOCAB_FILE} not found; install open-clip-torch or pass bpe_path")


def load_bpe(bpe_path: str | os.PathLike | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """(vocab in id order, merges in rank order) from an OpenAI-format BPE file (.txt.gz, header line first)."""
    with gzip.open(bpe_path or default_bpe_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:_NUM_MERGES + 1]]
    if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"CLIPTokenizer: {bpe_path} does not hold {_NUM_MERGES} merge pairs")
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    return vocab, merges


def clean_text(text: str) -> str:
    """HF slow CLIPTokenizer cleaning: ftfy.fix_text, collapse whitespace, strip, lowercase."""
    return _WHITESPACE.sub(" ", ftfy.fix_text(text)).strip().lower()


class CLIPTokenizer:
    """Prompts -> LongTensor [B, 77]: BOS, up to 75 BPE tokens, EOS, then pad (49407 by default).

    `__call__` truncates silently apart from a warning; `tokenize` also returns which prompts were truncated, and
    `count_tokens` gives a prompt's BPE length (more than 75 means it will be truncated).
    """

    def __init__(self, bpe_path: str | os.PathLike | None = None, context_length: int = CONTEXT_LENGTH,
                 pad_token_id: int | None = None):
        if context_length < 2:
            raise ValueError(f"CLIPTokenizer: context_length must be at least 2, got {context_length}")
        vocab, merges = load_bpe(bpe_path)
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.bpe_ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.bos_token_id = self.encoder[BOS]
        self.eos_token_id = self.encoder[EOS]
        self.pad_token_id = self.eos_token_id if pad_token_id is None else pad_token_id  # SD v1: pad with EOS
        self.context_length = context_length
        self._cache: dict[str, tuple[str, ...]] = {BOS: (BOS,), EOS: (EOS,)}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, word: str) -> tuple[str, ...]:
        """Byte-level BPE of one pre-token (already mapped to byte symbols): repeatedly merge the best-ranked pair."""
        if word in self._cache:
            return self._cache[word]
        parts = (*word[:-1], word[-1] + "</w>")
        while len(parts) > 1:
            pairs = set(zip(parts, parts[1:]))
            best = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of `best`, left to right, without overlap
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = tuple(merged)
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """BPE ids of the cleaned text, without BOS/EOS and without truncation."""
        ids = []
        for pre_token in _PATTERN.findall(clean_text(text)):
            word = "".join(self.byte_encoder[b] for b in pre_token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(word))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Approximate inverse of `encode` (lowercased, cleaned text); special tokens are kept as text."""
        byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        data = bytearray()
        for i in ids:
            token = self.decoder[int(i)]
            if token in (BOS, EOS):
                data.extend(token.encode())
                continue
            data.extend(byte_decoder[c] for c in token.removesuffix("</w>"))
            if token.endswith("</w>"):
                data.extend(b" ")
        return data.decode("utf-8", errors="replace").strip()

    def count_tokens(self, prompt: str) -> int:
        """Number of BPE tokens of a prompt (BOS/EOS excluded); above context_length - 2 it gets truncated."""
        return len(self.encode(prompt))

    def tokenize(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, list[bool]]:
        """(ids [B, context_length] long, truncated flags). Warns when a prompt is truncated."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"CLIPTokenizer: prompts must be strings, got {[type(p).__name__ for p in prompts]}")
        max_content = self.context_length - 2
        ids = torch.full((len(prompts), self.context_length), self.pad_token_id, dtype=torch.long)
        truncated = []
        for row, prompt in enumerate(prompts):
            tokens = self.encode(prompt)
            truncated.append(len(tokens) > max_content)
            tokens = [self.bos_token_id, *tokens[:max_content], self.eos_token_id]  # EOS survives truncation
            ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        if any(truncated):
            which = [i for i, t in enumerate(truncated) if t]
            warnings.warn(f"CLIPTokenizer: prompt(s) {which} longer than {max_content} tokens were truncated",
                          stacklevel=2)
        return ids, truncated

    def __call__(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Token ids [B, context_length] (long), as SD v1's FrozenCLIPEmbedder builds them."""
        return self.tokenize(prompts)[0]
