"""`+experiment=evidence`: the benchmark that settles the paper's claims (issue 21), resumable, paired.

Three groups of edits, each a grid of (held-out task, size, mask, seed) cases edited by every variant of the
group with the same seed, so every comparison is paired:
* `main`: ours (alpha and latent fusion), the baselines (naive at 1.875 x native, segmented native windows), the
  upscaler ablation (bilinear, SR only, no low-pass background), no decoder optimisation, unconditional
  upscaling stages, and the peers: the authors' code's behaviour (every reference quirk on) and diffusers'
  inpainting pipeline with `padding_mask_crop` on the same weights (claims C1, C2, C3, C5, beyond the paper);
* `repaint`: RePaint r in {0, 1, 2, 3, 5, 8} without reranking at the native size, where the edit is the first
  stage alone (r acts only there; decoder optimisation off, as `ablation_repaint`) (claim C4);
* `seeds`: ours with 8 seeds per task (claim C6);
* `bars` (readme preset, run only when named: `evidence.groups=[bars]`, `make evidence-bars`): ours, the
  baselines and the diffusers peer at 4 MP (2048 px) with the preset's steps, for the issue's bars at 4 MP (the
  full preset has 4 MP cases in `main`). About 5 minutes a task at one thread, most of it the segmented baseline.

Every finished edit appends one JSON line to `rows.jsonl` (the analyser's measures incl. the tile measures on
the lattice of ours' grid stage, object counts after every stage for the MSBD variants, seconds, peak memory), and
a restarted run skips the (group, task, size, mask, variant, seed) keys already there. The claim table, the
tables of means and paired differences and the figures are rebuilt from the rows on disk by
`experiments.evidence_report` (also run at the end, or alone: `python -m experiments.evidence_report DIR`).
Presets: `full` (>= 40 tasks at 1 and 4 MP, both masks, default settings) and `readme` (512 px, fewer steps and
candidates, decoder optimisation only in the C5 pair; sized to about two hours on 2 CPU cores, docs/evidence.md
gives the measurements), `tiny` for tests.
"""
from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from experiments.ablation_upscaler import NO_DIFFUSION
from experiments.common import (
    RunContext,
    ToyCase,
    peak_rss_gb,
    reset_peak_rss,
    toy_case,
    variant,
)
from msbd.config import MSBDConfig
from msbd.errors import InputError

MASKS = {"small": (0.08, 0.12), "large": (0.2, 0.3)}
OURS = "ours (alpha)"
WITH_DECODER_OPT = "ours + decoder opt"
MAIN_VARIANTS = (OURS, "ours (latent fusion)", "naive", "segmented", "a bilinear, no diffusion", "b SR only",
                 "e no low-pass background", "no decoder opt", "unconditional upscaling", "unconditional grid",
                 "authors' quirks", "diffusers inpaint (crop)")
# the readme preset runs without decoder optimisation (orthogonal to every claim but C5, and most of an edit's
# time), so its C5 pair is ours with it against ours (= no decoder opt)
README_MAIN = tuple(v for v in MAIN_VARIANTS if v != "no decoder opt") + (WITH_DECODER_OPT,)
# the bars of issue 21 at 4 MP: ours against the baselines and the diffusers peer (no decoder optimisation in the
# readme preset, as its main group)
BAR_VARIANTS = (OURS, "naive", "segmented", "a bilinear, no diffusion", "b SR only", "diffusers inpaint (crop)")
REPAINT_R = (0, 1, 2, 3, 5, 8)
N_SEEDS = 8
ROWS = "rows.jsonl"


@dataclass
class GroupSpec:
    tasks: int                           # held-out tasks 0 .. tasks-1
    sizes: list[int]                     # image height (= width) in px
    masks: list[str]
    variants: list[str]
    seeds: int = 1                       # seeds per case (seed = msbd.seed + k)


def _all(names) -> list[str]:
    return list(names)


PRESETS: dict[str, dict[str, GroupSpec]] = {
    "full": {
        "main": GroupSpec(40, [1024, 2048], ["small", "large"], _all(MAIN_VARIANTS)),
        "repaint": GroupSpec(40, [128], ["small", "large"], [f"r={r}" for r in REPAINT_R]),
        "seeds": GroupSpec(40, [1024], ["large"], [OURS], seeds=N_SEEDS),
    },
    "readme": {
        "main": GroupSpec(40, [512], ["large"], _all(README_MAIN)),
        "repaint": GroupSpec(40, [128], ["large"], [f"r={r}" for r in REPAINT_R]),
        "seeds": GroupSpec(40, [128], ["large"], [OURS], seeds=N_SEEDS),
        "bars": GroupSpec(40, [2048], ["large"], list(BAR_VARIANTS)),
    },
    "tiny": {
        "main": GroupSpec(1, [256], ["large"], [OURS, "ours (latent fusion)", "naive", "diffusers inpaint (crop)"]),
        "repaint": GroupSpec(1, [128], ["large"], ["r=0", "r=1"]),
        "seeds": GroupSpec(1, [128], ["large"], [OURS], seeds=2),
        "bars": GroupSpec(1, [256], ["large"], [OURS, "naive"]),
    },
}
# msbd settings of a preset on top of the run's config (the readme preset trades steps for tasks)
PRESET_SETTINGS: dict[str, dict[str, Any]] = {
    "full": {},
    "readme": {"first_stage": {"steps": 15, "batch": 3}, "upscale": {"steps": 40},
               "decoder_opt": {"enabled": False, "max_steps": 50}},
    "tiny": {"first_stage": {"steps": 3, "batch": 2, "repaint_steps": 1}, "upscale": {"steps": 4},
             "decoder_opt": {"max_steps": 2, "iterations": 2}},
}


DEFAULT_GROUPS = ("main", "repaint", "seeds")


def default_groups(preset: str) -> list[str]:
    return [g for g in DEFAULT_GROUPS if g in PRESETS[preset]]


@dataclass
class Params:
    preset: str = "readme"               # full | readme | tiny
    groups: list[str] | None = None      # None: main, repaint, seeds (bars only when named: hours at 4 MP)
    save_tasks: int = 3                  # the edits of tasks below this are saved as PNGs (the figures use them)
    max_edits: int = 0                   # stop after this many new edits (0 = all; timing runs and tests)
    report: bool = True                  # rebuild tables and figures from the rows at the end

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise InputError(f"evidence.preset: unknown {self.preset!r}; known: {list(PRESETS)}")
        if self.groups is None:
            self.groups = default_groups(self.preset)
        unknown = [g for g in self.groups if g not in PRESETS[self.preset]]
        if unknown or not self.groups:
            raise InputError(f"evidence.groups: unknown {unknown}; known: {list(PRESETS[self.preset])}")
        if self.max_edits < 0 or self.save_tasks < 0:
            raise InputError("evidence.max_edits and evidence.save_tasks must be >= 0")


# ------------------------------------------------------------------------------------------------------------
# Variants


@dataclass
class EvidenceVariant:
    name: str
    config: MSBDConfig
    method: str = "msbd"                 # msbd | naive | segmented | diffusers
    kwargs: dict = field(default_factory=dict)


def make_variant(name: str, base: MSBDConfig, naive_scale: float = 1.875) -> EvidenceVariant:
    """The variant called `name` on top of `base` (ours)."""
    from experiments.evidence_peers import authors_quirks
    single = variant(base, first_stage={"batch": 1, "rerank": False})
    if name.startswith("r="):
        return EvidenceVariant(name, variant(single, first_stage={"repaint_steps": int(name[2:])},
                                             decoder_opt={"enabled": False}))
    table = {
        OURS: lambda: EvidenceVariant(name, variant(base, grid={"fusion": "alpha"})),
        "ours (latent fusion)": lambda: EvidenceVariant(name, variant(base, grid={"fusion": "latent"})),
        "naive": lambda: EvidenceVariant(name, single, "naive",
                                         {"size": round(base.first_stage.size * naive_scale)}),
        "segmented": lambda: EvidenceVariant(name, single, "segmented"),
        "a bilinear, no diffusion": lambda: EvidenceVariant(name, variant(base, upscale={"mode": "bilinear",
                                                                                         **NO_DIFFUSION})),
        "b SR only": lambda: EvidenceVariant(name, variant(base, upscale={"mode": "esrgan", **NO_DIFFUSION})),
        "e no low-pass background": lambda: EvidenceVariant(name, variant(base, upscale={"lowpass": "no"})),
        "no decoder opt": lambda: EvidenceVariant(name, variant(base, decoder_opt={"enabled": False})),
        WITH_DECODER_OPT: lambda: EvidenceVariant(name, variant(base, decoder_opt={"enabled": True})),
        "unconditional upscaling": lambda: EvidenceVariant(name, variant(base, upscale={"conditional": False})),
        "unconditional grid": lambda: EvidenceVariant(name, variant(base, grid={"conditional": False})),
        "authors' quirks": lambda: EvidenceVariant(name, authors_quirks(base)),
        "diffusers inpaint (crop)": lambda: EvidenceVariant(name, single, "diffusers"),
    }
    if name not in table:
        raise InputError(f"evidence: unknown variant {name!r}")
    return table[name]()


# ------------------------------------------------------------------------------------------------------------
# Cases and rows


def case_key(group: str, task: int, size: int, mask: str, seed: int) -> str:
    return f"{group}/t{task}/{size}/{mask}/s{seed}"


def row_key(row: dict) -> tuple:
    return row["group"], int(row["task"]), int(row["size"]), row["mask"], row["variant"], int(row["seed"])


def plan(spec: GroupSpec, group: str, base_seed: int) -> list[tuple[int, int, str, int]]:
    """(task, size, mask, seed) in run order: task-major, so a stopped run holds whole tasks of every size."""
    return [(t, s, m, base_seed + k) for t in range(spec.tasks) for s in spec.sizes for m in spec.masks
            for k in range(spec.seeds)]


def load_rows(path: Path) -> list[dict]:
    """The rows written so far (a line cut short by a kill is ignored)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def end_line(path: Path) -> None:
    """Terminate a last line cut short by a kill, so the next row starts on its own line."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")


def append_row(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, default=_jsonable) + "\n")
        f.flush()


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        return x.item()
    return str(x)


def edit_one(case: ToyCase, v: EvidenceVariant, bundle, peer=None, tiles=None) -> tuple[np.ndarray, dict]:
    """Edit one case with one variant: (image, row fields: measures, stage counts, seconds, peak memory)."""
    from msbd import baselines
    from msbd.pipeline import run_msbd
    from msbd.toy.analyser import analyse_edit
    mask = case.mask.astype(np.float32)
    reset_peak_rss()
    t0, c0 = time.perf_counter(), time.process_time()
    result = None
    if v.method == "msbd":
        result = run_msbd(case.image, mask, case.task.prompt, v.config, bundle)
        image = result.image
    elif v.method == "diffusers":
        image = peer.edit(case.image, mask, case.task.prompt, v.config, bundle)
    else:
        image = getattr(baselines, v.method)(case.image, mask, case.task.prompt, v.config, bundle, **v.kwargs)
    # cpu_seconds: this process's CPU time, all threads; on a shared machine the wall time depends on the load
    row: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(time.process_time() - c0, 2),
                           "peak_rss_gb": round(peak_rss_gb(), 3)}
    if result is not None:
        from experiments.evidence_stages import grid_tiles_px, stage_images
        own_tiles = [tuple(b) for b in grid_tiles_px(result, v.config)]
        tiles = tiles or own_tiles
        row["tiles"] = own_tiles
        row["stage_counts"], row["stage_blobs"] = {}, {}
        for name, im in stage_images(case.image, case.mask, result, v.config):
            report = analyse_edit(im, case.mask, case.image, case.task, tiles=tiles or None)
            row["stage_counts"][name], row["stage_blobs"][name] = report.count, report.blobs
        row["stage_seconds"] = {s.name: round(s.seconds, 2) for s in result.stages}
    row.update(analyse_edit(image, case.mask, case.image, case.task, tiles=tiles or None).to_dict())
    return image, row


def run(ctx: RunContext, p: Params) -> dict:
    base = variant(ctx.msbd, **PRESET_SETTINGS[p.preset])
    rows_path = ctx.path(ROWS)
    end_line(rows_path)
    other = {r.get("preset") for r in load_rows(rows_path)} - {p.preset}
    if other:
        raise InputError(f"{rows_path} holds rows of preset {sorted(map(str, other))}, not {p.preset!r}: "
                         f"give each preset its own folder (hydra.run.dir)")
    done = {row_key(r) for r in load_rows(rows_path)}
    tiles_of = {case_key(r["group"], r["task"], r["size"], r["mask"], r["seed"]): r.get("tiles")
                for r in load_rows(rows_path) if r["variant"] == OURS and r.get("tiles")}
    bundle = ctx.bundle()
    peer, n_new = None, 0
    for group in p.groups or default_groups(p.preset):        # tests call run() without validate()
        spec = PRESETS[p.preset][group]
        variants = [make_variant(n, base) for n in spec.variants]
        for task, size, mask, seed in plan(spec, group, base.seed):
            case = toy_case(task, size, MASKS[mask], name=f"t{task}@{size}-{mask}")
            ck = case_key(group, task, size, mask, seed)
            for v in variants:
                key = (group, task, size, mask, v.name, seed)
                if key in done:
                    continue
                if p.max_edits and n_new >= p.max_edits:
                    return _finish(ctx, p, n_new)
                if v.method == "diffusers" and peer is None:
                    from experiments.evidence_peers import DiffusersPeer
                    peer = DiffusersPeer(bundle)
                config = variant(v.config, seed=seed)
                row = {"group": group, "task": task, "size": size, "mask": mask, "variant": v.name, "seed": seed,
                       "preset": p.preset, "prompt": case.task.prompt, "megapixels": round(case.megapixels, 3)}
                try:
                    image, measures = edit_one(case, EvidenceVariant(v.name, config, v.method, v.kwargs), bundle,
                                               peer, tiles_of.get(ck))
                except (ValueError, AssertionError, RuntimeError) as err:     # e.g. the reference crop rule's assert
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                    append_row(rows_path, row)
                    print(f"{ck} {v.name}: {row['error']}\n{traceback.format_exc(limit=2)}")
                    n_new += 1
                    continue
                if v.name == OURS and measures.get("tiles"):
                    tiles_of[ck] = measures["tiles"]
                row.update(measures)
                append_row(rows_path, row)
                n_new += 1
                if task < p.save_tasks:
                    from msbd.io import save_png_atomic
                    save_png_atomic(image, ctx.path("edits", group, edit_name(task, size, mask, v.name, seed)))
                if ctx.progress:
                    print(f"[{n_new}] {ck} {v.name}: count {row.get('count')} edge {row.get('edge_ratio')} "
                          f"{row['seconds']} s", flush=True)
    return _finish(ctx, p, n_new)


def edit_name(task: int, size: int, mask: str, variant_name: str, seed: int) -> str:
    slug = "".join(ch if ch.isalnum() else "_" for ch in variant_name).strip("_")
    return f"t{task}_{size}_{mask}_s{seed}_{slug}.png"


def _finish(ctx: RunContext, p: Params, n_new: int) -> dict:
    summary: dict[str, Any] = {"new_edits": n_new, "rows": len(load_rows(ctx.path(ROWS)))}
    if p.report:
        from experiments.evidence_report import build_report
        summary["claims"] = build_report(ctx.out_dir)
    return summary
