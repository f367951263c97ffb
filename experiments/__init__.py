"""One module per paper table or figure; `scripts/run.py +experiment=NAME` runs `experiments.NAME.run`.

Each module defines `Params` (a dataclass: its typed config node, `NAME:` in the composed config) and
`run(ctx: experiments.common.RunContext, params: Params) -> dict` (a short summary for the DONE marker).
"""
from __future__ import annotations

import importlib
from types import ModuleType

EXPERIMENTS = ("smoke", "demo", "edit", "paper", "ablation_upscaler", "ablation_repaint", "seeds", "baselines",
               "eval", "toy_quality", "evidence")


def load_experiment(name: str) -> ModuleType:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"experiments.{name}")
