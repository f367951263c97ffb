"""The evidence benchmark's tables, claim table and figures, rebuilt from `rows.jsonl` alone (no editing).

`python -m experiments.evidence_report DIR` (or the end of `+experiment=evidence`) writes into DIR:
* `claims.md` (the README block) and `claims.json`: one row per claim comparison, C1..C6, the two rows beyond the
  paper and the peers: the measured effect (mean paired difference other - ours), its 95% bootstrap interval, the
  paired test, the Holm-adjusted p over the claim table and the verdict (`experiments.stats.verdict`);
* `rows.csv`: the rows as a table;
* `results.md`: the claim table, the issue's bars at 4 MP (when the rows hold 4 MP edits; also alone in
  `bars.md`), per group and variant
  every metric's mean with its 95% bootstrap interval, every variant's paired difference from the group's
  reference (Holm across that table) and the object counts after every stage (issue 21 item 6);
* `fig_baselines.png` (paper Figures 2/4), `fig_upscaler.png` (5), `fig_repaint.png` (6), `fig_seeds.png` (7)
  from the edits saved as PNGs.
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from experiments.common import write_csv
from experiments.evidence import (
    MASKS,
    OURS,
    ROWS,
    WITH_DECODER_OPT,
    edit_name,
    load_rows,
)
from experiments.stats import Estimate, bootstrap_mean, holm, paired_test, verdict


def _num(row: dict, key: str) -> float:
    v = row.get(key)
    return math.nan if v is None or "error" in row else float(v)


METRICS: dict[str, Callable[[dict], float]] = {
    "one object": lambda r: math.nan if "error" in r else float(r["count"] == 1),
    "objects": lambda r: _num(r, "count"),
    "colour ok": lambda r: math.nan if "error" in r else float(bool(r["colour_ok"])),
    "edge ratio": lambda r: _num(r, "edge_ratio"),
    "seam": lambda r: _num(r, "seam"),
    "seam bg": lambda r: _num(r, "seam_bg"),          # away from the object's outline (rows from 2026-12-06 on)
    "halo colour": lambda r: _num(r, "halo_colour"),
    "halo texture": lambda r: _num(r, "halo_texture"),
    "tile step": lambda r: _num(r, "tile_step"),
    "tile texture step": lambda r: _num(r, "tile_texture_step"),
    "blobs": lambda r: math.nan if r.get("blobs", -1) in (-1, None) else _num(r, "blobs"),
    "seconds": lambda r: _num(r, "seconds"),
    "cpu seconds": lambda r: _num(r, "cpu_seconds"),
}
DIFF_METRICS = ("one object", "objects", "edge ratio", "seam", "seam bg", "halo colour", "tile step", "blobs")
REFERENCE = {"main": OURS, "repaint": "r=5", "seeds": None, "bars": OURS}


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    group: str
    base: str                    # ours (the paper's method or setting); "a|b": the first variant the rows hold
    other: str
    metric: str
    expect: int                  # the sign of mean(other - base) the claim predicts
    size: int | None = None      # only cases of this size (the bars)
    no_worse: bool = False       # a non-inferiority bar: "met" unless significantly reversed, else "not met"


CLAIMS = (
    Claim("C1", "naive blended diffusion at 1.875x native repeats objects; ours gives one", "main", OURS, "naive",
          "one object", -1),
    Claim("C1", "separate native windows (segmented, the DALL-E 2 baseline) repeat them too", "main", OURS,
          "segmented", "one object", -1),
    Claim("C2", "bilinear upscaling of the first stage is blurrier than SR + blended diffusion", "main", OURS,
          "a bilinear, no diffusion", "edge ratio", +1),
    Claim("C2", "SR-only upscaling is blurrier than SR + blended diffusion", "main", OURS, "b SR only",
          "edge ratio", +1),
    Claim("C3", "without the low-pass background the edit is blurrier", "main", OURS, "e no low-pass background",
          "edge ratio", +1),
    # C4 on the seam away from the object: with r >= 1 the object fills the mask and its outline lies on the contour
    Claim("C4", "RePaint r=5 blends better than r=0 (seam at the mask border, away from the object)", "repaint",
          "r=5", "r=0", "seam bg", +1),
    Claim("C4", "too many RePaint steps degrade: r=8 blends worse than r=5", "repaint", "r=5", "r=8", "seam bg", +1),
    Claim("C5", "decoder optimisation reduces seams", "main", f"{WITH_DECODER_OPT}|{OURS}", f"no decoder opt|{OURS}",
          "seam", +1),
    Claim("C6", "of 8 seeds one gives exactly one object more often than seed 0 alone", "seeds", "seed 0",
          "best of 8", "one object", +1),
    Claim("B1", "beyond: latent fusion leaves smaller steps between grid tiles than alpha compositing", "main", OURS,
          "ours (latent fusion)", "tile step", -1),
    Claim("B2", "beyond: an unconditional grid stage (grid.conditional=false) leaves fewer blobs of the prompt's "
          "colour than the prompt in every tile", "main", OURS, "unconditional grid", "blobs", -1),
    Claim("P1", "peer: ours gives one object more often than diffusers' inpainting with padding_mask_crop", "main",
          OURS, "diffusers inpaint (crop)", "one object", -1),
    Claim("P1", "peer: ours is sharper than diffusers' inpainting with padding_mask_crop", "main", OURS,
          "diffusers inpaint (crop)", "edge ratio", +1),
    Claim("P2", "peer: our fixes give smaller seams than the authors' behaviour (every reference quirk)", "main",
          OURS, "authors' quirks", "seam", +1),
)
BARS = (
    Claim("bar", "4 MP: ours one object more often than naive", "main", OURS, "naive", "one object", -1, 2048),
    Claim("bar", "4 MP: ours one object more often than segmented", "main", OURS, "segmented", "one object", -1, 2048),
    Claim("bar", "4 MP: ours sharper than bilinear", "main", OURS, "a bilinear, no diffusion", "edge ratio", +1, 2048),
    Claim("bar", "4 MP: ours sharper than SR only", "main", OURS, "b SR only", "edge ratio", +1, 2048),
    Claim("bar", "4 MP: ours sharper than the diffusers peer", "main", OURS, "diffusers inpaint (crop)",
          "edge ratio", +1, 2048),
    Claim("bar", "4 MP: ours no worse than the diffusers peer on one object (met unless significantly worse)",
          "main", OURS, "diffusers inpaint (crop)", "one object", -1, 2048, no_worse=True),
)


# ------------------------------------------------------------------------------------------------------------
# Pairing


def case_of(row: dict) -> tuple:
    return int(row["task"]), int(row["size"]), row["mask"], int(row["seed"])


def values_by_case(rows: list[dict], group: str, variant: str, metric: str, size: int | None = None) -> dict:
    """{(task, size, mask, seed): metric} of one variant; the seeds group's "seed 0" / "best of 8" are per task."""
    fn = METRICS[metric]
    sel = [r for r in rows if r["group"] == group and (size is None or int(r["size"]) == size)]
    if group == "seeds" and variant in ("seed 0", "best of 8"):
        by_task: dict[tuple, list[tuple[int, float]]] = {}
        for r in sel:
            by_task.setdefault((int(r["task"]), int(r["size"]), r["mask"]), []).append((int(r["seed"]), fn(r)))
        out = {}
        for k, vals in by_task.items():
            vals.sort()
            finite = [v for _, v in vals if math.isfinite(v)]
            out[k] = vals[0][1] if variant == "seed 0" else (max(finite) if finite else math.nan)
        return out
    return {case_of(r): fn(r) for r in sel if r["variant"] == variant}


def resolve(rows: list[dict], group: str, names: str) -> str:
    """The first of the "|"-separated variant names with rows in `group` (the first one if none has)."""
    held = {r["variant"] for r in rows if r["group"] == group}
    options = names.split("|")
    return next((n for n in options if n in held or n in ("seed 0", "best of 8")), options[0])


def paired(rows: list[dict], c: Claim) -> tuple[list[float], list[float]]:
    base, other = resolve(rows, c.group, c.base), resolve(rows, c.group, c.other)
    if base == other:                           # e.g. C5 with neither decoder-optimisation variant run
        return [], []
    a, b = values_by_case(rows, c.group, base, c.metric, c.size), values_by_case(rows, c.group, other, c.metric,
                                                                                 c.size)
    keys = sorted(set(a) & set(b))
    return [a[k] for k in keys], [b[k] for k in keys]


def evaluate(rows: list[dict], claims=CLAIMS) -> list[dict]:
    """One dict per claim: effect, interval, test, p, Holm-adjusted p (over `claims`), verdict."""
    results = []
    for c in claims:
        a, b = paired(rows, c)
        res = paired_test(a, b)
        base, other = bootstrap_mean(a), bootstrap_mean(b)
        results.append({"id": c.id, "claim": c.text, "metric": c.metric, "base": resolve(rows, c.group, c.base),
                        "other": resolve(rows, c.group, c.other),
                        "n": res.diff.n, "base_mean": base.mean, "other_mean": other.mean,
                        "effect": res.diff.mean, "lo": res.diff.lo, "hi": res.diff.hi, "test": res.test,
                        "p": res.p, "expect": c.expect, "no_worse": c.no_worse})
    for r, p_adj in zip(results, holm([r["p"] for r in results])):
        r["p_holm"] = p_adj
        r["verdict"] = "no data" if r["n"] == 0 else verdict(r["effect"], p_adj, r["expect"])
        if r["no_worse"] and r["n"]:
            r["verdict"] = "not met" if r["verdict"] == "reversed" else "met"
    return results


# ------------------------------------------------------------------------------------------------------------
# Tables


def _p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")


def claims_markdown(results: list[dict], title: str = "Claims of the paper, measured on the toy world") -> str:
    lines = [f"### {title}", "",
             "| | claim | metric | ours: mean | other: mean | effect (other - ours) [95% CI] | n | p (Holm) | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        effect = Estimate(r["effect"], r["lo"], r["hi"], r["n"]).fmt()
        lines.append(f"| {r['id']} | {r['claim']} | {r['metric']} | {r['base']}: {_f(r['base_mean'])} | "
                     f"{r['other']}: {_f(r['other_mean'])} | "
                     f"{effect} | {r['n']} | {_p(r['p_holm'])} ({r['test']}) | **{r['verdict']}** |")
    return "\n".join(lines) + "\n"


def _f(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.2f}"


def means_markdown(rows: list[dict]) -> str:
    out = []
    for group in sorted({r["group"] for r in rows}):
        sel = [r for r in rows if r["group"] == group]
        names = list(dict.fromkeys(r["variant"] for r in sel))
        metrics = [m for m in METRICS if any(math.isfinite(METRICS[m](r)) for r in sel)]
        out += [f"#### {group}: mean [95% bootstrap CI] per variant", "",
                "| variant | n | errors | " + " | ".join(metrics) + " |", "|---|---|---|" + "---|" * len(metrics)]
        for name in names:
            vr = [r for r in sel if r["variant"] == name]
            cells = [bootstrap_mean([METRICS[m](r) for r in vr]).fmt() for m in metrics]
            out.append(f"| {name} | {len(vr)} | {sum('error' in r for r in vr)} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def differences(rows: list[dict]) -> list[dict]:
    """Every variant against its group's reference on DIFF_METRICS, Holm across the whole table."""
    claims = []
    for group, ref in REFERENCE.items():
        names = list(dict.fromkeys(r["variant"] for r in rows if r["group"] == group))
        if ref is None or ref not in names:
            continue
        claims += [Claim("d", f"{group}: {name}", group, ref, name, m, +1) for name in names if name != ref
                   for m in DIFF_METRICS]
    return evaluate(rows, claims) if claims else []


def differences_markdown(results: list[dict]) -> str:
    if not results:
        return ""
    lines = ["#### Paired differences from the reference (other - reference), Holm across this table", "",
             "| comparison | metric | n | difference [95% CI] | test | p (Holm) |", "|---|---|---|---|---|---|"]
    for r in results:
        if r["n"] == 0:
            continue
        d = Estimate(r["effect"], r["lo"], r["hi"], r["n"]).fmt(3)
        lines.append(f"| {r['claim']} vs {r['base']} | {r['metric']} | {r['n']} | {d} | {r['test']} | "
                     f"{_p(r['p_holm'])} |")
    return "\n".join(lines) + "\n"


SPREAD_METRICS = ("one object", "objects", "colour ok", "edge ratio", "seam", "seam bg", "halo colour",
                  "halo texture", "blobs")


def seed_spread(rows: list[dict], group: str = "seeds") -> dict[str, tuple]:
    """C6's spread: per metric, (within-task SD across the seeds, averaged over tasks with a bootstrap CI;
    SD of the task means, the spread between tasks for scale; seeds per task, tasks). Tasks with fewer than two
    finite values of a metric are left out of it."""
    sel = [r for r in rows if r["group"] == group and "error" not in r]
    out = {}
    for metric in SPREAD_METRICS:
        by_task: dict[tuple, list[float]] = {}
        for r in sel:
            v = METRICS[metric](r)
            if math.isfinite(v):
                by_task.setdefault((int(r["task"]), int(r["size"]), r["mask"]), []).append(v)
        groups = [np.asarray(v) for v in by_task.values() if len(v) >= 2]
        if not groups:
            continue
        within = bootstrap_mean([float(g.std(ddof=1)) for g in groups])
        between = float(np.std([g.mean() for g in groups], ddof=1)) if len(groups) > 1 else math.nan
        out[metric] = (within, between, round(float(np.mean([len(g) for g in groups])), 1), len(groups))
    return out


def seed_spread_markdown(rows: list[dict]) -> str:
    spread = seed_spread(rows)
    if not spread:
        return ""
    lines = ["#### C6: spread over seeds (the seeds group)", "",
             "Within a task: the standard deviation of a metric across its seeds, averaged over tasks [95% bootstrap "
             "CI]; between tasks: the standard deviation of the task means, for scale.", "",
             "| metric | within a task, across seeds | between tasks | seeds per task | tasks |", "|---|---|---|---|---|"]
    for metric, (within, between, seeds, tasks) in spread.items():
        lines.append(f"| {metric} | {within.fmt()} | {_f(between)} | {seeds:g} | {tasks} |")
    return "\n".join(lines) + "\n"


def _by_position(counts: dict) -> tuple[float, float, float]:
    """(after the first stage, after the last stage before the final one, after the final stage)."""
    values = list(counts.values())
    return values[0], (values[1:-1] or values[:1])[-1], values[-1]


def stage_counts_markdown(rows: list[dict]) -> str:
    """Objects (the analyser's count) and blobs of the prompt's colour (specks included, with the grid's tiles)
    after every stage (issue 21 item 6), per MSBD variant; where the count rose."""
    sel = [r for r in rows if r.get("stage_counts") and "error" not in r]
    if not sel:
        return ""
    header = ("| group | variant | n | objects: first | before last | last | rose at last | blobs: first | before last "
              "| last | rose at last |")
    lines = ["#### Objects and blobs of the prompt's colour in the mask after every stage (MSBD variants)", "", header,
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for group, name in dict.fromkeys((r["group"], r["variant"]) for r in sel):
        vr = [r for r in sel if r["variant"] == name and r["group"] == group]
        cells = []
        for key in ("stage_counts", "stage_blobs"):
            pos = [_by_position(r[key]) for r in vr if r.get(key) and -1 not in r[key].values()]
            if not pos:
                cells += ["n/a"] * 4
                continue
            cols = list(zip(*pos))
            cells += [bootstrap_mean(c).fmt() for c in cols] + [f"{np.mean([c > b for _, b, c in pos]):.2f}"]
        lines.append(f"| {group} | {name} | {len(vr)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------
# Figures


FIGURES = {
    "fig_baselines.png": ("main", ["naive", "segmented", OURS, "ours (latent fusion)", "diffusers inpaint (crop)",
                                   "authors' quirks"], "Figures 2/4: baselines and peers"),
    "fig_upscaler.png": ("main", ["a bilinear, no diffusion", "b SR only", "e no low-pass background",
                                  "unconditional upscaling", OURS, WITH_DECODER_OPT], "Figure 5: upscaling ablation"),
    "fig_repaint.png": ("repaint", None, "Figure 6: RePaint steps (no reranking, first stage)"),
    "fig_seeds.png": ("seeds", None, "Figure 7: seeds"),
}


def figures(out_dir: Path, rows: list[dict], max_rows: int = 3) -> list[Path]:
    """The paper-style figures from the saved edits (cases of the largest size that has saved PNGs)."""
    from PIL import Image

    from experiments.common import figure_grid, toy_case, zoom_box
    made = []
    for fname, (group, names, title) in FIGURES.items():
        sel = [r for r in rows if r["group"] == group and "error" not in r]
        saved = [r for r in sel if (out_dir / "edits" / group / edit_name(r["task"], r["size"], r["mask"],
                                                                          r["variant"], r["seed"])).exists()]
        if not saved:
            continue
        size = max(int(r["size"]) for r in saved)
        if group == "seeds":
            cases = sorted({(r["task"], r["size"], r["mask"]) for r in saved if r["size"] == size})[:max_rows]
            cols = sorted({int(r["seed"]) for r in saved})
            cells = [[(t, s, m, OURS, k) for k in cols] for t, s, m in cases]
            labels = [f"seed {k}" for k in cols]
        else:
            cols = names or list(dict.fromkeys(r["variant"] for r in sel))
            cases = sorted({(r["task"], r["size"], r["mask"], r["seed"]) for r in saved if r["size"] == size})
            cells = [[(t, s, m, v, k) for v in cols] for t, s, m, k in cases[:max_rows]]
            labels = list(cols)
        grid, zooms, row_labels = [], [], []
        for row in cells:
            t, s, m = row[0][:3]
            case = toy_case(t, s, MASKS[m])
            images = [case.image]
            for (t, s, m, v, k) in row:
                path = out_dir / "edits" / group / edit_name(t, s, m, v, k)
                images.append(np.asarray(Image.open(path).convert("RGB")) if path.exists()
                              else np.full_like(case.image, 128))
            grid.append(images)
            zooms.append(zoom_box(case.mask, size=max(48, s // 6)))
            row_labels.append(case.task.prompt)
        made.append(figure_grid(grid, out_dir / fname, col_labels=["input", *labels], row_labels=row_labels,
                                zoom=zooms, title=title))
    return made


# ------------------------------------------------------------------------------------------------------------


def bar_group_of(rows: list[dict]) -> str | None:
    """The group holding the 4 MP edits the bars are computed from: `bars` (readme preset), else `main` (full)."""
    for group in ("bars", "main"):
        if any(r["group"] == group and int(r["size"]) == 2048 for r in rows):
            return group
    return None


def build_report(out_dir: Path | str) -> dict:
    """Write claims.md/json, results.md and the figures from out_dir/rows.jsonl; returns {claim: verdict}."""
    out_dir = Path(out_dir)
    rows = load_rows(out_dir / ROWS)
    claims = evaluate(rows)
    bar_group = bar_group_of(rows)
    bars = evaluate(rows, [replace(c, group=bar_group) for c in BARS]) if bar_group else []
    n_min = min((r["n"] for r in claims if r["n"]), default=0)
    head = (f"{len(rows)} edits; every verdict is computed from them (supported: Holm-adjusted p < 0.05 with the "
            f"predicted sign; reversed: significant with the opposite sign); smallest n per comparison {n_min}.\n\n")
    (out_dir / "claims.md").write_text(claims_markdown(claims) + "\n" + head)
    (out_dir / "claims.json").write_text(json.dumps({"claims": claims, "bars": bars}, indent=2, default=str))
    parts = ["# Evidence benchmark", "", head, claims_markdown(claims)]
    if bars:
        ours4 = bootstrap_mean(values_by_case(rows, bar_group, OURS, "one object", 2048).values())
        bar_rows = [r for r in rows if r["group"] == bar_group and int(r["size"]) == 2048]
        bars_md = [claims_markdown(bars, "Bars of issue 21 at 4 MP"),
                   f"ours' one-object rate at 4 MP: {ours4.fmt()} (bar: >= 0.80); {len(bar_rows)} edits at 4 MP "
                   f"({len({r['task'] for r in bar_rows})} tasks).\n"]
        (out_dir / "bars.md").write_text("\n".join(bars_md))
        parts += bars_md
    parts += [means_markdown(rows), seed_spread_markdown(rows), differences_markdown(differences(rows)),
              stage_counts_markdown(rows)]
    (out_dir / "results.md").write_text("\n".join(parts))
    write_csv(rows, out_dir / "rows.csv")
    figures(out_dir, rows)
    return {f"{r['id']} {r['other']} {r['metric']}": r["verdict"] for r in claims}


def main(argv: list[str]) -> int:
    usage = "usage: python -m experiments.evidence_report RUN_DIR (the folder holding rows.jsonl)"
    if len(argv) != 1 or argv[0].startswith("-"):
        print(usage, file=sys.stderr)
        return 2
    if not (Path(argv[0]) / ROWS).is_file():
        print(f"error: {Path(argv[0]) / ROWS} not found (run `make evidence` first)", file=sys.stderr)
        return 2
    print(json.dumps(build_report(argv[0]), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
