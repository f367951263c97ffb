"""The toy inpainting UNet against the blended toy UNet, on the same tasks and seeds (issue 19, part 4).

    python scripts/measure_toy_inpaint.py [--base-dir msbd/toy/weights] [--overlay BASE_DIR/toy-inpaint-unet.safetensors] [--bar 40]
        [--edits 6 --size 512] [--out outputs/toy_inpaint]

1. The quality bar's inpainting task set (`msbd.toy.quality.measure_inpainting`: first stage at 128 px, RePaint as
   configured, batch 1): success = exactly one object of the prompt's colour in the mask and the colour right;
   outside the mask byte-identical.
2. Multi-stage edits of held-out scenes at `--size` px (`experiments.common.toy_case` / `run_edit`, the toy model's
   default MSBD settings): the analyser's object count (repeated objects), colour, seam, halo colour and texture.
Both UNets run in the same pipeline, which blends the known region in either case. Rows and means go to
OUT/results.json; edits are written as PNGs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments.common import ModelSpec, load_bundle, run_edit, toy_case  # noqa: E402
from msbd.config import MSBDConfig, replace  # noqa: E402
from msbd.toy import presets, quality  # noqa: E402

KEYS = ("count", "colour_ok", "shape_ok", "seam", "seam_ref", "halo_colour", "halo_texture", "edge_ratio")


def _spec(ckpt: str, ldm_config: str) -> ModelSpec:
    return ModelSpec(name="toy", ldm_config=ldm_config, ckpt=ckpt, upscaler=presets.SR_WEIGHTS,
                     reranker=presets.CLIP_WEIGHTS, reranker_arch="msbd-toy-clip")


def _mean(rows: list[dict], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key) is not None and np.isfinite(float(r[key]))]
    return round(float(np.mean(values)), 3) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-dir", default=presets.WEIGHTS_DIR,
                        help="folder of the toy LDM (toy-ldm.safetensors, toy-ldm.json) and its overlay")
    parser.add_argument("--overlay", help="default: BASE_DIR/toy-inpaint-unet.safetensors")
    parser.add_argument("--bar", type=int, default=40, help="tasks of the inpainting bar (0: skip)")
    parser.add_argument("--edits", type=int, default=6, help="multi-stage edits (0: skip)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default=os.path.join(ROOT, "outputs", "toy_inpaint"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=["blended", "inpainting"], help="measure one variant (results_<only>.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    config = MSBDConfig.for_native_size(presets.TOY_IMAGE_SIZE, progress=False)
    config.first_stage.steps = args.steps
    args.overlay = args.overlay or os.path.join(args.base_dir, "toy-inpaint-unet.safetensors")
    ldm_config = os.path.join(args.base_dir, os.path.basename(presets.LDM_CONFIG))
    base = os.path.join(args.base_dir, os.path.basename(presets.LDM_WEIGHTS))
    variants = {"blended toy UNet": base, "inpainting toy UNet": args.overlay}
    for path in (ldm_config, base, args.overlay):
        if not os.path.isfile(path):
            sys.exit(f"error: {path} not found (--base-dir holds toy-ldm.safetensors, toy-ldm.json and the overlay)")
    from ldm.checkpoint.formats import linked_files
    if linked_files(args.overlay).get("overlay_base") != Path(base):
        sys.exit(f"error: --overlay {args.overlay} is not an overlay on {base}")
    if args.only:
        variants = {k: v for k, v in variants.items() if k.startswith(args.only)}
    out_json = os.path.join(args.out, f"results_{args.only}.json" if args.only else "results.json")
    result: dict = {"args": vars(args), "bar": {}, "edits": {}, "edit_rows": []}
    for name, ckpt in variants.items():
        try:
            bundle = load_bundle(_spec(ckpt, ldm_config), config)
        except ValueError as err:                    # InputError, CheckpointError: one line
            sys.exit(f"error: {str(err).splitlines()[0]}")
        assert bundle.inpainting == (ckpt == args.overlay), name
        if args.bar:
            t0 = time.time()
            figures, _ = quality.measure_inpainting(bundle, config, args.bar)
            result["bar"][name] = {**figures, "seconds": round(time.time() - t0, 1)}
            print(name, "bar", result["bar"][name], flush=True)
        rows = []
        for seed in range(args.edits):
            case = toy_case(seed, args.size)
            image, row = run_edit(case, replace(config, seed=seed), bundle)
            Image.fromarray(image).save(os.path.join(args.out, f"{name.split()[0]}_task{seed}.png"))
            rows.append({"variant": name, "case": case.name, **{k: row.get(k) for k in (*KEYS, "seconds")}})
            print(json.dumps(rows[-1], default=str), flush=True)
        result["edit_rows"] += rows
        if rows:
            result["edits"][name] = {"n": len(rows), "one_object": _mean([{"x": r["count"] == 1} for r in rows], "x"),
                                     **{k: _mean(rows, k) for k in (*KEYS, "seconds")}}
        with open(out_json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    print(json.dumps({"bar": result["bar"], "edits": result["edits"]}, indent=1, default=str))


if __name__ == "__main__":
    main()
