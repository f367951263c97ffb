"""`+experiment=edit`: the user's own image, mask and prompt.

    python scripts/run.py +experiment=edit edit.image=photo.jpg edit.mask=mask.png edit.prompt="a red car" \
        edit.output=edited.png            # add model=sd-v1 model.ckpt=PATH ... device=cuda for real weights

Everything is checked before a model is loaded (files readable and of the same size, mask not empty, prompt not
empty, output not an input and not lossy, settings in range, the run fits in memory); a problem ends in one
`error:` line and exit code 2 with nothing written. The output is a PNG with the prompt, seed, resolved
configuration and weights hashes in its text chunks; `edit.intermediates=true` also saves every stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from experiments.common import RunContext, write_json
from msbd.errors import InputError


@dataclass
class Params:
    image: str | None = None        # input image (any format PIL reads; EXIF rotation honoured)
    mask: str | None = None         # mask: white (>= 50%) = edit; L, 1-bit, RGB, RGBA (alpha), P, 16-bit, 0/1
    prompt: str = ""                # what the masked region should show
    output: str | None = None       # output PNG (default: edited.png in the run folder)
    intermediates: bool = False     # save the candidates and every stage into the run folder

    def validate(self) -> None:
        from msbd.io import _check_output, load_image, load_mask
        if not self.image or not self.mask:
            raise InputError("edit needs image=PATH mask=PATH prompt=\"...\" (and optionally output=OUT.png)")
        if not self.prompt.strip():
            raise InputError("prompt is empty: describe what should appear inside the mask")
        image = load_image(self.image)
        load_mask(self.mask, image.shape[:2])
        if self.output:
            _check_output(Path(self.output), (self.image, self.mask), allow_lossy=False)


def run(ctx: RunContext, p: Params) -> dict:
    from msbd.cli_edit import edit
    output = Path(p.output) if p.output else ctx.path("edited.png")
    result = edit(p.image, p.mask, p.prompt, output, ctx.msbd, ctx.bundle(),
                  intermediates_dir=ctx.out_dir / "intermediates" if p.intermediates else None, progress=ctx.progress)
    print(f"edited {p.image} -> {output} in {result.timings['total']:.1f} s "
          f"({len(result.stages)} stages, crop {result.plan.final.height}x{result.plan.final.width})")
    print(result.time_summary())
    write_json(ctx.path("report.json"), {"output": str(output), "seed": result.seed, **result.time_report()})
    return {"output": str(output), "seconds": round(result.timings["total"], 1)}
