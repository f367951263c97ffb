"""Where an edit's time goes: seconds and call counts per kind of work (UNet, VAE, SR, reranking, decoder opt).

`CallStats.time(kind)` is a context manager around one call. On the CPU it reads the wall clock. On CUDA the
work is queued asynchronously, so it records a pair of CUDA events instead and resolves them in `totals()` (one
synchronisation per read, not one per call), so profiling does not stall the GPU between calls.

    stats = CallStats(device)
    with stats.time("unet"):
        eps = unet(x, t, c)
    stats.totals()   # {"unet": {"seconds": 1.23, "calls": 50}, ...}

Kinds nest: seconds of an inner kind are also counted by the outer one (decoder optimisation calls the VAE, whose
time stays under "decoder_opt"; `exclusive=True` on the inner call keeps it out of the VAE rows).
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch

KINDS = ("unet", "vae_encode", "vae_decode", "sr", "rerank", "decoder_opt")


class CallStats:
    """Seconds and counts per kind; see the module docstring."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.calls: dict[str, int] = defaultdict(int)
        self._seconds: dict[str, float] = defaultdict(float)
        self._events: dict[str, list] = defaultdict(list)
        self._muted = 0

    @contextmanager
    def time(self, kind: str) -> Iterator[None]:
        if self._muted:
            yield
            return
        self.calls[kind] += 1
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events[kind].append((start, end))
            return
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[kind] += time.perf_counter() - t0

    @contextmanager
    def muted(self) -> Iterator[None]:
        """Calls inside are not counted (their time belongs to an enclosing kind)."""
        self._muted += 1
        try:
            yield
        finally:
            self._muted -= 1

    def totals(self) -> dict[str, dict[str, float]]:
        """{kind: {"seconds", "calls"}} for every kind called so far (resolves CUDA events: one sync)."""
        if self.cuda and any(self._events.values()):
            torch.cuda.synchronize()
            for kind, pairs in self._events.items():
                self._seconds[kind] += sum(s.elapsed_time(e) for s, e in pairs) / 1000
                pairs.clear()
        return {k: {"seconds": round(self._seconds[k], 3), "calls": self.calls[k]} for k in self.calls}

    def since(self, before: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        """totals() minus an earlier totals() snapshot (a stage's share)."""
        now = self.totals()
        out = {}
        for kind, row in now.items():
            prev = before.get(kind, {"seconds": 0.0, "calls": 0})
            calls = row["calls"] - prev["calls"]
            if calls:
                out[kind] = {"seconds": round(row["seconds"] - prev["seconds"], 3), "calls": calls}
        return out


def format_split(split: dict[str, dict[str, float]]) -> str:
    """'unet 12.3 s (300), vae_decode 0.4 s (5), ...' in KINDS order."""
    order = [k for k in KINDS if k in split] + [k for k in split if k not in KINDS]
    return ", ".join(f"{k} {split[k]['seconds']:.1f} s ({split[k]['calls']})" for k in order)
