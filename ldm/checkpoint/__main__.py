"""Command line: does this weights file fit, and what does a config expect?

    python -m ldm.checkpoint inspect FILE [--config sd-v1] [--ema]
        format, model family (SD 1.x / 2.x / SDXL, inpainting) and what to pass for it, keys / parameters / dtypes
        per component, schedule check, and the missing, unexpected or mis-shaped keys against the config.
    python -m ldm.checkpoint keys CONFIG
        JSON {"model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3], ...}: every CompVis name and shape
        the config expects (built on the meta device: instant, no memory).

Errors print one line on stderr: exit code 2 for bad arguments, 1 for files that cannot be read.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch

from ldm.checkpoint.components import COMPONENTS, expected_keys, has_ema, partition, prefixes
from ldm.checkpoint.diagnose import (
    SUGGEST, check_schedule, describe_mismatches, file_family, guess_family, likely_causes, unet_in_channels,
)
from ldm.checkpoint.errors import CheckpointError
from ldm.checkpoint.formats import read_state_dict
from ldm.checkpoint.load import check_exists, resolve_config
from ldm.config import LDMConfig


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _dtypes(tensors: list[torch.Tensor]) -> str:
    counts = Counter(str(t.dtype).removeprefix("torch.") for t in tensors)
    return ", ".join(f"{d}" if len(counts) == 1 else f"{d} x{n}" for d, n in counts.most_common()) or "-"


def _size(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e9


def inspect(path: str, config: LDMConfig, name: str, use_ema: bool) -> list[str]:
    """The lines of the `inspect` report (`name` names the config in the text)."""
    file = check_exists(path, config_key=None, hint="give the path of a .ckpt/.safetensors file or diffusers folder")
    state_dict, fmt = read_state_dict(file, config)
    part = partition(state_dict, config, use_ema and has_ema(state_dict))
    lines = [f"file:      {file.resolve()} ({_size(file):.2f} GB)", f"format:    {fmt}",
             f"family:    {guess_family(state_dict)}", *_family_notes(state_dict), "",
             f"{'component':<10} {'prefix':<31} {'keys':>6} {'parameters':>13}  dtypes"]
    pre = prefixes(config)
    for c in COMPONENTS:
        tensors = list(part.components[c].values())
        lines.append(f"{c:<10} {pre[c]:<31} {len(tensors):>6} {sum(t.numel() for t in tensors):>13,}  "
                     f"{_dtypes(tensors)}")
    lines.append(f"{'ignored':<10} {'(schedule, EMA, unused text keys)':<31} {len(part.ignored):>6}")
    lines.append(f"{'other':<10} {'(fits no component)':<31} {len(part.unexpected):>6}")
    lines += ["", _schedule_line(state_dict, config, name)]
    problems = describe_mismatches(state_dict, config, COMPONENTS, use_ema and has_ema(state_dict))
    if not problems:
        lines.append(f"against {name}: every key and shape matches" + (" (UNet from model_ema.*)" if use_ema else ""))
    else:
        lines.append(f"against {name}:")
        lines += [f"  {p}" for p in problems]
        lines += [f"  likely {c}" for c in likely_causes(state_dict, config, use_ema)]
    return lines


def _family_notes(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """What to pass for the family found (SD 2.x: the weights do not tell eps from v-prediction)."""
    found = file_family(state_dict)
    if found is None:
        return []
    notes = [f"pass:      {SUGGEST[found]}"]
    if found == "SD 2.x":
        notes.append("           (512-base and 768-v weights have the same shapes; the parameterisation is not stored)")
    if unet_in_channels(state_dict) == 9:
        notes.append("           the inpainting UNet is read from the file (config 'sd-v1-inpainting' / "
                     "'sd-v2-inpainting' for --config)")
    return notes


def _schedule_line(state_dict: dict[str, torch.Tensor], config: LDMConfig, name: str) -> str:
    try:
        rel = check_schedule(state_dict, config)
    except CheckpointError as e:
        return f"schedule:  MISMATCH: {e}"
    if rel is None:
        return "schedule:  no alphas_cumprod stored (nothing to check)"
    return f"schedule:  stored alphas_cumprod matches {name} (max relative error {rel:.1e})"


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m ldm.checkpoint", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_inspect = sub.add_parser("inspect", help="describe a weights file and compare it with a config")
    p_inspect.add_argument("file", help=".ckpt/.pt/.pth/.safetensors file or diffusers folder")
    p_inspect.add_argument("--config", default="sd-v1", help="preset to compare with (default: sd-v1)")
    p_inspect.add_argument("--ema", action="store_true", help="compare the model_ema.* UNet copies instead")
    p_keys = sub.add_parser("keys", help="print as JSON every CompVis name and shape a config expects")
    p_keys.add_argument("config", help="preset name: sd-v1, sd-v1-inpainting, sd-v2, sd-v2-768, sd-v2-inpainting, ...")
    args = parser.parse_args(argv)   # subparsers inherit _Parser, so their errors are one line too
    try:
        config, name = resolve_config(args.config)
    except ValueError as e:
        parser.error(str(e))
    try:
        if args.command == "keys":
            rows = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in expected_keys(config).items()]
            sys.stdout.write("{\n" + ",\n".join(rows) + "\n}\n")
        else:
            print("\n".join(inspect(args.file, config, name, args.ema)))
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
        return 0
    except (CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
