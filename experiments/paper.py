"""`+experiment=paper`: the paper's examples from a `prompt; file; margin` list (the format of inputs.txt).

Each line names an image whose mask is `<stem>_mask.png` beside it; lines starting with `#` are comments. Every
example is edited with its own margin into `<stem>_edited.png` (a PNG with provenance), and `figure.png` shows
input, mask and result side by side. With the toy model this runs the whole pipeline at the real sizes (the
pictures are meaningless, the geometry and the byte-identical outside are not); with `model=sd-v1` on a GPU it
reproduces the paper's figures.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from experiments.common import RunContext, figure_grid, variant, write_csv
from msbd.errors import InputError


@dataclass
class Params:
    inputs: str = "../shared/inputs/inputs.txt"   # relative to the repository or absolute
    limit: int = 0                                # only the first N examples (0 = all)

    def path(self) -> Path:
        p = Path(self.inputs)
        repo = Path(__file__).resolve().parent.parent
        return p if p.is_absolute() or p.exists() else repo / p

    def validate(self) -> None:
        examples = read_examples(self.path())
        if not examples:
            raise InputError(f"paper.inputs: {self.path()} lists no examples")
        if self.limit < 0:
            raise InputError(f"paper.limit must be >= 0, got {self.limit}")


def read_examples(path: Path) -> list[tuple[str, Path, Path, float]]:
    """(prompt, image, mask, margin) per line of a `prompt; file; margin` list."""
    if not path.is_file():
        raise InputError(f"paper.inputs: list file {path} not found")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [x.strip() for x in line.split(";")]
        if len(parts) != 3:
            raise InputError(f"{path}:{n}: expected 'prompt; file; margin', got {line!r}")
        prompt, name, margin = parts
        try:
            margin_f = float(margin)
        except ValueError:
            raise InputError(f"{path}:{n}: margin {margin!r} is not a number") from None
        image = path.parent / name
        mask = image.with_name(f"{image.stem}_mask.png")
        for f in (image, mask):
            if not f.is_file():
                raise InputError(f"{path}:{n}: {f} not found")
        out.append((prompt, image, mask, margin_f))
    return out


def run(ctx: RunContext, p: Params) -> dict:
    import numpy as np
    from PIL import Image
    from msbd.cli_edit import edit
    from msbd.io import load_image, load_mask
    examples = read_examples(p.path())[: p.limit or None]
    rows, done = [], {}
    for prompt, image_path, mask_path, margin in examples:
        out = ctx.path(f"{image_path.stem}_edited.png")
        result = edit(image_path, mask_path, prompt, out, variant(ctx.msbd, margin=margin), ctx.bundle(),
                      progress=ctx.progress)
        image = load_image(image_path)
        mask = load_mask(mask_path, image.shape[:2]) >= 0.5
        outside_identical = bool((result.image[~mask] == image[~mask]).all())
        done[image_path.name] = {"seconds": round(result.timings["total"], 1), "outside_identical": outside_identical,
                                 "size": f"{image.shape[1]}x{image.shape[0]}"}
        small = lambda a: np.asarray(Image.fromarray(a).resize((a.shape[1] // 4, a.shape[0] // 4)))  # noqa: E731
        rows.append([small(image), small((mask * 255).astype(np.uint8)), small(result.image)])
        print(f"{image_path.name}: {done[image_path.name]}")
    write_csv([{"image": name, **values} for name, values in done.items()], ctx.path("results.csv"))
    figure_grid(rows, ctx.path("figure.png"), col_labels=["input", "mask", "edited"],
                row_labels=[os.path.basename(str(e[1])) for e in examples], title="paper examples")
    return done
