"""`+experiment=baselines`: the paper's Figures 2 and 4, naive vs segmented vs ours.

* naive: blended diffusion directly at a larger size (the paper's 960 px for a 512 px model: 1.875 x native),
  then bilinear to full size - the failure mode is repeated or incoherent objects;
* segmented: the masked area edited window by window at native size, independently (the paper's DALL-E 2
  comparison) - the failure mode is several partial objects and seams;
* ours: MSBD (alpha tile compositing) and MSBD with latent (MultiDiffusion) tile fusion.
The analyser's object count says which failure mode occurred.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from experiments.common import CaseSpec, RunContext, Variant, run_variants, short_summary, variant
from msbd.errors import InputError


@dataclass
class Params:
    cases: CaseSpec = field(default_factory=lambda: CaseSpec(tasks=[0, 1, 2, 3], sizes=[1024]))
    naive_scale: float = 1.875      # naive baseline's long edge / native size (960 / 512 in the paper)

    def validate(self) -> None:
        self.cases.validate("baselines.cases")
        if self.naive_scale < 1:
            raise InputError(f"baselines.naive_scale must be >= 1, got {self.naive_scale}")


def variants_for(base, native: int, naive_scale: float) -> list[Variant]:
    single = variant(base, first_stage={"batch": 1, "rerank": False})
    return [
        Variant("naive", single, "naive", {"size": int(round(native * naive_scale))}),
        Variant("segmented", single, "segmented"),
        Variant("ours (alpha)", variant(base, grid={"fusion": "alpha"})),
        Variant("ours (latent fusion)", variant(base, grid={"fusion": "latent"})),
    ]


def run(ctx: RunContext, p: Params) -> dict:
    variants = variants_for(ctx.msbd, ctx.msbd.first_stage.size, p.naive_scale)
    return short_summary(run_variants(ctx, p.cases.cases(), variants, "Figures 2 and 4: baselines"))
