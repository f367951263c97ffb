"""`+experiment=ablation_upscaler`: the paper's Figure 5, the upscaling stages taken apart.

(a) bilinear upscaling, no diffusion; (b) ESRGAN, no diffusion; (c) ESRGAN + unconditional SDEdit of the whole
crop; (d) ESRGAN + text-conditional SDEdit; (e) + blended diffusion (background kept); (f) + low-pass-filtered
reference background (the full method). The first stage is shared by construction (same seed and settings), so
the columns differ only in how the result is upscaled. Scored by the toy world's analyser.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from experiments.common import CaseSpec, RunContext, Variant, run_variants, short_summary, variant

NO_DIFFUSION = {"strength": 0.0, "grid_strength": 0.0, "blended": False}
VARIANTS = {
    "a bilinear": {"mode": "bilinear", **NO_DIFFUSION},
    "b esrgan": {"mode": "esrgan", **NO_DIFFUSION},
    "c +uncond. diffusion": {"mode": "esrgan", "conditional": False, "blended": False},
    "d +text cond.": {"mode": "esrgan", "conditional": True, "blended": False},
    "e +blended": {"mode": "esrgan", "conditional": True, "blended": True, "lowpass": "no"},
    "f +low-pass bg (ours)": {"mode": "esrgan", "conditional": True, "blended": True, "lowpass": "matching"},
}


@dataclass
class Params:
    cases: CaseSpec = field(default_factory=lambda: CaseSpec(tasks=[0, 1, 2, 3], sizes=[1024]))
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))

    def validate(self) -> None:
        self.cases.validate("ablation_upscaler.cases")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"ablation_upscaler.variants: unknown {unknown}; known: {list(VARIANTS)}")


def run(ctx: RunContext, p: Params) -> dict:
    variants = [Variant(name, variant(ctx.msbd, upscale=VARIANTS[name])) for name in p.variants]
    return short_summary(run_variants(ctx, p.cases.cases(), variants, "Figure 5: upscaling ablation"))
