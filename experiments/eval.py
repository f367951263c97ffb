"""`+experiment=eval`: the quantitative benchmark on the toy world - every variant, scored by the analyser.

A fixed set of held-out editing tasks (scenes at `sizes` px, i.e. 1 to 16 megapixels, each with a small and a
large mask) is edited under every variant: MSBD with alpha and with latent tile fusion, MSBD without RePaint,
upscaling without diffusion (Figure 5 a), and the naive and segmented baselines. Per edit: object count in the
mask (exactly one coherent object is right; several is the paper's failure mode), colour and shape accuracy, edge
width against the ground-truth render (1 = as sharp as the truth), seam strength along the mask border
(1 = like the input), PSNR outside the mask (inf: byte-identical), time and peak memory. Output: `results.csv`
(every edit) and `results.md` (means and 95% intervals per variant), `figure.png`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from experiments.ablation_upscaler import NO_DIFFUSION
from experiments.baselines import variants_for
from experiments.common import CaseSpec, RunContext, Variant, run_variants, short_summary, variant
from msbd.errors import InputError

MASKS = {"small": [0.08, 0.12], "large": [0.2, 0.3]}
VARIANTS = ("ours (alpha)", "ours (latent fusion)", "ours r=0", "no diffusion (bilinear)", "naive", "segmented")


@dataclass
class Params:
    tasks: list[int] = field(default_factory=lambda: [0, 1])
    sizes: list[int] = field(default_factory=lambda: [1024, 2048, 4096])   # 1, 4 and 16 megapixels
    masks: list[str] = field(default_factory=lambda: ["small", "large"])
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    naive_scale: float = 1.875

    def validate(self) -> None:
        if not self.tasks or not self.sizes or not self.masks or not self.variants:
            raise InputError("eval.tasks, eval.sizes, eval.masks and eval.variants must not be empty")
        for m in self.masks:
            if m not in MASKS:
                raise InputError(f"eval.masks: unknown {m!r}; known: {list(MASKS)}")
        for v in self.variants:
            if v not in VARIANTS:
                raise InputError(f"eval.variants: unknown {v!r}; known: {list(VARIANTS)}")
        for m in self.masks:
            CaseSpec(self.tasks, self.sizes, MASKS[m]).validate("eval")


def all_variants(base, native: int, naive_scale: float) -> dict[str, Variant]:
    out = {v.name: v for v in variants_for(base, native, naive_scale)}
    out["ours r=0"] = Variant("ours r=0", variant(base, first_stage={"repaint_steps": 0}))
    out["no diffusion (bilinear)"] = Variant("no diffusion (bilinear)",
                                             variant(base, upscale={"mode": "bilinear", **NO_DIFFUSION}))
    return out


def run(ctx: RunContext, p: Params) -> dict:
    pool = all_variants(ctx.msbd, ctx.msbd.first_stage.size, p.naive_scale)
    cases = []
    for m in p.masks:
        for case in CaseSpec(p.tasks, p.sizes, MASKS[m]).cases():
            case.name = f"{case.name}-{m}"
            cases.append(case)
    summary = run_variants(ctx, cases, [pool[v] for v in p.variants], "Toy-world benchmark", figure_cases=2)
    return short_summary(summary)
