"""`make demo`, old code against new, in one run: seconds per stage and the analyser's figures side by side.

    python bench/demo_speed.py                        # base = the commit before the speed work (8244bad)
    python bench/demo_speed.py --base HEAD~3 --skip-old-if-cached

The base commit is checked out into a git worktree under outputs/ (the same toy weights ship with it) and its demo
runs with this checkout's Python environment; then this checkout's demo runs. Both write their run folders under
outputs/bench_demo_speed/. The analyser of *this* checkout measures both outputs (count, colour, shape, seam, edge
ratio, halo), so the figures are comparable even where the old report.json lacks a measure. Results are printed
as a table and written to outputs/bench_demo_speed/result.json. The machine is noisy: the two runs are
sequential, nothing else should run meanwhile.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASE = "8244bad"   # main before the GPU-path and speed work (issues 17 and 22)


def run_demo(checkout: Path, run_dir: Path, extra: list[str]) -> float:
    """Run the demo of `checkout` into run_dir; returns wall seconds."""
    (run_dir / "DONE").unlink(missing_ok=True)
    cmd = [sys.executable, str(checkout / "scripts" / "run.py"), "+experiment=demo", f"hydra.run.dir={run_dir}",
           "progress=false", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: the demo of {checkout} failed: {proc.stderr.strip().splitlines()[-1:]}")
    (run_dir / "stdout.txt").write_text(proc.stdout)
    return seconds


def measure(run_dir: Path) -> dict:
    from experiments.common import analyse, toy_case
    demo = _demo_params()
    case = toy_case(demo["task"], demo["size"], aspect=demo["aspect"])
    edited = np.asarray(Image.open(run_dir / "output.png").convert("RGB"))
    report = analyse(case, edited)
    old = json.loads((run_dir / "report.json").read_text())
    return {"analyser": {k: report[k] for k in ("count", "colour_ok", "shape_ok", "seam", "edge_ratio",
                                                 "halo_colour", "halo_texture", "psnr_outside")},
            "stages": [{k: s.get(k) for k in ("name", "seconds", "tiles", "unet_calls", "split")}
                       for s in old.get("stages", [])]}


def _demo_params() -> dict:
    from omegaconf import OmegaConf
    return dict(OmegaConf.load(ROOT / "configs" / "experiment" / "demo.yaml")["demo"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=BASE, help="commit of the old code (default: %(default)s)")
    parser.add_argument("--skip-old-if-cached", action="store_true",
                        help="reuse the old run when its folder is complete (not side by side: say so)")
    parser.add_argument("extra", nargs="*", help="overrides for both demos, e.g. msbd.decoder_opt.iterations=5")
    args = parser.parse_args(argv)
    out = ROOT / "outputs" / "bench_demo_speed"
    out.mkdir(parents=True, exist_ok=True)
    tree = out / "base"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "-f", "--detach", str(tree), args.base], cwd=ROOT, check=True,
                       capture_output=True)
    subprocess.run(["git", "checkout", "-q", "--detach", args.base], cwd=tree, check=True)
    result = {"base": args.base, "head": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                          capture_output=True, text=True).stdout.strip()}
    old_dir, new_dir = out / "old", out / "new"
    if args.skip_old_if_cached and (old_dir / "DONE").exists():
        result["old_seconds"] = json.loads((old_dir / "DONE").read_text())["seconds"]
        result["old_cached"] = True
    else:
        result["old_seconds"] = round(run_demo(tree, old_dir, args.extra), 1)
    result["new_seconds"] = round(run_demo(ROOT, new_dir, args.extra), 1)
    result["speedup"] = round(result["old_seconds"] / result["new_seconds"], 2)
    result["old"], result["new"] = measure(old_dir), measure(new_dir)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"make demo: old ({args.base}) {result['old_seconds']} s, new ({result['head']}) {result['new_seconds']} s:"
          f" x{result['speedup']} faster")
    print("| measure | old | new |\n|---|---|---|")
    for key in result["new"]["analyser"]:
        o, n = result["old"]["analyser"][key], result["new"]["analyser"][key]
        fmt = (lambda v: f"{v:.3f}") if isinstance(n, float) else str
        print(f"| {key} | {fmt(o)} | {fmt(n)} |")
    for side in ("old", "new"):
        for stage in result[side]["stages"]:
            print(f"{side} {stage['name']}: {stage['seconds']} s, tiles {stage['tiles']}, "
                  f"UNet calls {stage['unet_calls']}" + (f", split {stage['split']}" if stage.get("split") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
