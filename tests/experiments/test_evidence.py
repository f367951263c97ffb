"""The evidence benchmark (issue 21): resuming, pairing, the claim table's verdicts on constructed rows, the peers.

The harness tests replace the edit by a stand-in (the analyser's fields from a formula of the variant and task),
so they test the bookkeeping in well under a second; the peers run the toy layout on random weights; the whole
tiny preset on the shipped toy weights is `slow`."""
import dataclasses
import json
import math

import numpy as np
import pytest

from experiments import evidence, evidence_report
from experiments.common import ModelSpec, RunContext
from experiments.evidence import PRESETS, Params, load_rows, plan
from msbd.config import MSBDConfig
from msbd.errors import InputError


def _ctx(tmp_path):
    ctx = RunContext(out_dir=tmp_path, seed=0, model=ModelSpec(), msbd=MSBDConfig.for_native_size(128),
                     progress=False)
    ctx._bundle = object()                                # never used by the stand-in edit
    return ctx


@pytest.fixture
def fake_edits(monkeypatch):
    calls = []

    def edit_one(case, v, bundle, peer=None, tiles=None):
        calls.append((case.name, v.name, v.config.seed))
        return case.image, {"seconds": 0.1, "count": 1 if v.name.startswith("ours") else 2, "colour_ok": True,
                            "edge_ratio": 1.5, "seam": 1.0, "stage_counts": {"first": 1, "stage1": 1}}

    class Peer:
        def __init__(self, bundle):
            pass

    monkeypatch.setattr(evidence, "edit_one", edit_one)
    monkeypatch.setattr("experiments.evidence_peers.DiffusersPeer", Peer)
    return calls


def test_a_stopped_run_resumes_where_it_stopped_and_pairs_every_variant(tmp_path, fake_edits):
    ctx = _ctx(tmp_path)
    total = sum(len(plan(PRESETS["tiny"][g], g, 0)) * len(PRESETS["tiny"][g].variants)
                for g in evidence.default_groups("tiny"))                 # bars only when named
    evidence.run(ctx, Params(preset="tiny", max_edits=3, report=False))
    assert len(load_rows(tmp_path / "rows.jsonl")) == 3
    with open(tmp_path / "rows.jsonl", "a") as f:
        f.write('{"group": "main", "task": 0, "si')          # a line cut short by a kill is ignored
    evidence.run(ctx, Params(preset="tiny", report=False))
    rows = load_rows(tmp_path / "rows.jsonl")
    keys = [evidence.row_key(r) for r in rows]
    assert len(rows) == total == len(set(keys)) == len(fake_edits)
    seeds = sorted({r["seed"] for r in rows if r["group"] == "seeds"})
    assert seeds == [0, 1]
    by_case = {}
    for r in rows:                                          # every variant of a group edits the same cases
        by_case.setdefault((r["group"], r["variant"]), set()).add(evidence_report.case_of(r))
    for group in evidence.default_groups("tiny"):
        cases = [v for (g, _), v in by_case.items() if g == group]
        assert all(c == cases[0] for c in cases)
    evidence.run(ctx, Params(preset="tiny", report=False))  # complete: nothing new
    assert len(load_rows(tmp_path / "rows.jsonl")) == total
    with pytest.raises(InputError, match="preset"):         # another preset's rows are not mixed in
        evidence.run(ctx, Params(preset="readme", report=False))


def _rows(variant, group, values, size=512, metric_key="count", seed_of=lambda t: 0, **extra):
    return [{"group": group, "task": t, "size": size, "mask": "large", "variant": variant, "seed": seed_of(t),
             "count": 1, "colour_ok": True, "edge_ratio": 2.0, "seam": 1.0, **extra, metric_key: v}
            for t, v in enumerate(values)]


def test_claim_verdicts_on_constructed_rows(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    ours_edge = 2 + rng.normal(0, 0.2, n)
    rows = (_rows(evidence.OURS, "main", [1] * n, edge_ratio=0)
            + _rows("naive", "main", [3] * 30 + [1] * 10)                     # repeats objects: C1 supported
            + _rows("segmented", "main", [1] * 38 + [2] * 2)                  # too few differences: not supported
            + _rows("a bilinear, no diffusion", "main", ours_edge - 0.5, metric_key="edge_ratio"))  # sharper
    for r, e in zip(rows[:n], ours_edge):
        r["edge_ratio"] = e
    rows += [{**r, "size": 2048} for r in rows]                               # the same at 4 MP, for the bars
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    verdicts = evidence_report.build_report(tmp_path)
    assert verdicts["C1 naive one object"] == "supported"
    assert verdicts["C1 segmented one object"] == "not supported"
    assert verdicts["C2 a bilinear, no diffusion edge ratio"] == "reversed"
    assert verdicts["C5 ours (alpha) seam"] == "no data"              # neither decoder-optimisation variant ran
    saved = json.loads((tmp_path / "claims.json").read_text())
    c1 = saved["claims"][0]
    assert c1["n"] == 2 * n and c1["effect"] == pytest.approx(-30 / n) and c1["p_holm"] < 1e-6
    assert [b["verdict"] for b in saved["bars"]][:2] == ["supported", "not supported"]
    text = (tmp_path / "claims.md").read_text()
    assert "| C1 |" in text and "**supported**" in text and "**reversed**" in text
    assert "ours' one-object rate at 4 MP: 1.00" in (tmp_path / "results.md").read_text()


def test_best_of_seeds_pairs_per_task():
    rows = []
    for t in range(3):                                     # seed 0 fails, seed 2 succeeds, in every task
        rows += [{"group": "seeds", "task": t, "size": 256, "mask": "large", "variant": evidence.OURS, "seed": k,
                  "count": 1 if k == 2 else 3} for k in range(4)]
    a, b = evidence_report.paired(rows, evidence_report.CLAIMS[8])
    assert evidence_report.CLAIMS[8].id == "C6" and a == [0.0] * 3 and b == [1.0] * 3


def test_seed_spread_separates_within_task_from_between_task_spread(tmp_path):
    """C6's spread on constructed rows: task t's 4 seeds have edge ratios t + (0, 1, 2, 3), so the SD across seeds is
    std([0, 1, 2, 3], ddof=1) in every task, and the task means (t + 1.5) spread like the task indices."""
    rows = []
    for t in range(5):
        rows += [{"group": "seeds", "task": t, "size": 256, "mask": "large", "variant": evidence.OURS, "seed": k,
                  "count": 1, "colour_ok": True, "edge_ratio": t + k, "seam": 1.0} for k in range(4)]
    rows.append({**rows[0], "seed": 9, "error": "boom"})                  # failed edits are left out
    spread = evidence_report.seed_spread(rows)
    within, between, seeds, tasks = spread["edge ratio"]
    assert within.mean == pytest.approx(np.std([0, 1, 2, 3], ddof=1)) and within.lo == pytest.approx(within.mean)
    assert between == pytest.approx(np.std(range(5), ddof=1)) and seeds == 4 and tasks == 5
    assert spread["one object"][0].mean == 0 and "seam bg" not in spread           # no seam_bg in these rows
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    evidence_report.build_report(tmp_path)
    assert "#### C6: spread over seeds" in (tmp_path / "results.md").read_text()


def test_authors_quirks_switch_every_reference_quirk():
    from experiments.evidence_peers import authors_quirks, quirk_fields_all_switched
    base = MSBDConfig.for_native_size(128)
    assert quirk_fields_all_switched(authors_quirks(base)) == []
    assert len(quirk_fields_all_switched(base)) >= 9


def test_every_variant_builds_and_differs_from_ours():
    base = MSBDConfig.for_native_size(128)
    ours = evidence.make_variant(evidence.OURS, base)
    for name in evidence.MAIN_VARIANTS[1:] + tuple(f"r={r}" for r in evidence.REPAINT_R):
        v = evidence.make_variant(name, base)
        assert v.method != "msbd" or v.config != ours.config, name
    with pytest.raises(Exception, match="unknown variant"):
        evidence.make_variant("nope", base)


@pytest.mark.slow
def test_diffusers_peer_keeps_the_outside_and_edits_the_inside():
    """diffusers' inpainting pipeline on the toy layout (random weights, 2 steps): about 10 s on one core."""
    pytest.importorskip("diffusers")
    from experiments.common import load_bundle, toy_case, variant
    from experiments.evidence_peers import DiffusersPeer
    config = variant(MSBDConfig.for_native_size(128), first_stage={"steps": 2, "batch": 1, "rerank": False})
    bundle = load_bundle(ModelSpec(ckpt=None), variant(config, upscale={"mode": "bilinear"}))  # random toy weights
    case = toy_case(0, 256, (0.2, 0.3))
    out = DiffusersPeer(bundle).edit(case.image, case.mask.astype(np.float32), case.task.prompt, config, bundle)
    assert out.shape == case.image.shape and out.dtype == np.uint8
    assert np.array_equal(out[~case.mask], case.image[~case.mask])
    assert np.abs(out[case.mask].astype(int) - case.image[case.mask]).mean() > 1


@pytest.mark.slow
def test_tiny_preset_end_to_end_on_the_toy_weights(tmp_path):
    """The whole tiny preset through scripts/run.py's code path (about 1 minute on one core)."""
    from experiments.common import ModelSpec as Spec
    spec = Spec(ckpt="msbd/toy/weights/toy-ldm.safetensors", upscaler="msbd/toy/weights/toy-sr-x4.safetensors",
                reranker="msbd/toy/weights/toy-clip.safetensors")
    ctx = RunContext(out_dir=tmp_path, seed=0, model=spec, msbd=MSBDConfig.for_native_size(128), progress=False)
    evidence.run(ctx, Params(preset="tiny"))
    rows = load_rows(tmp_path / "rows.jsonl")
    assert len(rows) == 8 and not any("error" in r for r in rows)
    assert all(r["psnr_outside"] == math.inf for r in rows)
    assert all(r.get("stage_counts") for r in rows if r["variant"].startswith("ours"))
    assert (tmp_path / "claims.md").exists() and (tmp_path / "fig_baselines.png").exists()


def test_the_experiment_config_composes_and_checks(tmp_path):
    from _experiment_helpers import compose_experiment, run_script

    from msbd.errors import InputError
    cfg = compose_experiment(tmp_path, "evidence", "model=random")
    _, params = run_script.check(cfg)
    assert params.preset == "readme" and params.groups == ["main", "repaint", "seeds"]
    with pytest.raises(InputError, match="evidence.preset"):
        run_script.check(compose_experiment(tmp_path, "evidence", "model=random", "evidence.preset=huge"))
    _, params = run_script.check(compose_experiment(tmp_path, "evidence", "model=random", "evidence.groups=[bars]"))
    assert params.groups == ["bars"]


def test_c5_pairs_the_decoder_optimisation_variants_of_either_preset():
    c5 = next(c for c in evidence_report.CLAIMS if c.id == "C5")
    seams = {evidence.OURS: [2.0] * 12, evidence.WITH_DECODER_OPT: [1.0] * 12, "no decoder opt": [3.0] * 12}
    readme = _rows(evidence.OURS, "main", seams[evidence.OURS], metric_key="seam") + _rows(
        evidence.WITH_DECODER_OPT, "main", seams[evidence.WITH_DECODER_OPT], metric_key="seam")
    full = _rows(evidence.OURS, "main", seams[evidence.OURS], metric_key="seam") + _rows(
        "no decoder opt", "main", seams["no decoder opt"], metric_key="seam")
    assert evidence_report.paired(readme, c5) == ([1.0] * 12, [2.0] * 12)   # ours + decoder opt vs ours (off)
    assert evidence_report.paired(full, c5) == ([2.0] * 12, [3.0] * 12)     # ours (on) vs no decoder opt
    assert [r["verdict"] for r in evidence_report.evaluate(readme, [c5])] == ["supported"]


def test_report_command_line_errors_are_one_line(tmp_path, capsys):
    assert evidence_report.main(["--help"]) == 2
    assert evidence_report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage:") and err[1].startswith("error:") and "rows.jsonl" in err[1]


def test_the_bars_come_from_the_bars_group_when_the_rows_hold_one(tmp_path):
    main = _rows(evidence.OURS, "main", [1] * 12) + _rows("naive", "main", [3] * 12)
    assert evidence_report.bar_group_of(main) is None                       # no 4 MP edits: no bars
    bars = [dict(r, group="bars", size=2048) for r in main]
    assert evidence_report.bar_group_of(main + bars) == "bars"
    full = [dict(r, size=2048) for r in main]
    assert evidence_report.bar_group_of(full) == "main"
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(dict(r, preset="readme")) + "\n" for r in main + bars))
    evidence_report.build_report(tmp_path)
    verdicts = {b["other"]: b["verdict"] for b in json.loads((tmp_path / "claims.json").read_text())["bars"]
                if b["metric"] == "one object"}
    assert verdicts["naive"] == "supported"                                 # 12 of 12 pairs, p = 2^-11
    peer = [dict(r, variant="diffusers inpaint (crop)") for r in bars if r["variant"] == "naive"]
    no_worse = next(c for c in evidence_report.BARS if c.no_worse)
    ours = [r for r in bars if r["variant"] == evidence.OURS]
    bar_group = dataclasses.replace(no_worse, group="bars")
    assert evidence_report.evaluate(ours + peer, [bar_group])[0]["verdict"] == "met"          # peer worse: met
    worse = [dict(r, count=3) for r in ours]
    assert evidence_report.evaluate(worse + [dict(r, count=1) for r in peer], [bar_group])[0]["verdict"] == "not met"
    assert "Bars of issue 21 at 4 MP" in (tmp_path / "results.md").read_text()
    assert "Bars of issue 21 at 4 MP" in (tmp_path / "bars.md").read_text()
