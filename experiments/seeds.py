"""`+experiment=seeds`: the paper's Figure 7, several seeds per input (how reliable one run is).

Each case is edited with `n_seeds` seeds (everything else fixed); the table gives, per seed, the analyser's
figures, and the figure shows one row per case and one column per seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from experiments.common import CaseSpec, RunContext, Variant, run_variants, short_summary, variant
from msbd.errors import InputError


@dataclass
class Params:
    cases: CaseSpec = field(default_factory=lambda: CaseSpec(tasks=[0, 1], sizes=[768]))
    n_seeds: int = 8

    def validate(self) -> None:
        self.cases.validate("seeds.cases")
        if self.n_seeds < 1:
            raise InputError(f"seeds.n_seeds must be >= 1, got {self.n_seeds}")


def run(ctx: RunContext, p: Params) -> dict:
    variants = [Variant(f"seed {ctx.msbd.seed + k}", variant(ctx.msbd, seed=ctx.msbd.seed + k)) for k in range(p.n_seeds)]
    summary = run_variants(ctx, p.cases.cases(), variants, "Figure 7: seeds", figure_cases=len(p.cases.tasks))
    return short_summary(summary)
