"""`+experiment=ablation_repaint`: the paper's Figure 6, RePaint steps r = 0, 1, 2, 3, 5, 8 without reranking.

RePaint only acts in the first stage, so the default cases are native-size renders (128 px for the toy model):
the edit is then the first stage alone, measured directly. Larger `cases.sizes` run the whole pipeline.
More RePaint passes should give objects that fit their surroundings and appear more reliably.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from experiments.common import CaseSpec, RunContext, Variant, run_variants, short_summary, variant
from msbd.errors import InputError


@dataclass
class Params:
    cases: CaseSpec = field(default_factory=lambda: CaseSpec(tasks=list(range(12)), sizes=[128]))
    repaint_steps: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 5, 8])

    def validate(self) -> None:
        self.cases.validate("ablation_repaint.cases")
        if not self.repaint_steps or any(r < 0 for r in self.repaint_steps):
            raise InputError(f"ablation_repaint.repaint_steps must be non-negative, got {self.repaint_steps}")


def run(ctx: RunContext, p: Params) -> dict:
    variants = [Variant(f"r={r}", variant(ctx.msbd, first_stage={"repaint_steps": r, "batch": 1, "rerank": False}))
                for r in p.repaint_steps]
    return short_summary(run_variants(ctx, p.cases.cases(), variants, "Figure 6: RePaint steps (no reranking)"))
