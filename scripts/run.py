"""The one Hydra entry point: compose the configuration, check it, run the chosen experiment.

    python scripts/run.py +experiment=demo                                  # the README's main job
    python scripts/run.py +experiment=edit image=IMG mask=MASK prompt="..." output=OUT.png
    python scripts/run.py -m +experiment=ablation_repaint msbd.seed=0,1,2 hydra/launcher=joblib

The schema is typed (`RootConfig` below, built from the dataclasses of `msbd.config` and `experiments`), so a
misspelled key or a wrong type fails at compose time. Everything below this file receives plain objects.
Errors a user can cause (bad config values, bad inputs, missing weights) end in one line on stderr, exit code 2,
and nothing written. A run whose folder already holds the `DONE` marker is skipped, so a killed sweep restarted
with the same command redoes only the runs that did not complete.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import hydra  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from experiments import EXPERIMENTS, load_experiment  # noqa: E402
from experiments.common import DONE_MARKER, ModelSpec, RunContext, ldm_config_of, model_files, write_json  # noqa: E402
from msbd.config import MSBDConfig, resolve_seed  # noqa: E402
from msbd.errors import InputError, composition_message  # noqa: E402

log = logging.getLogger("msbd")
DTYPES = ("float32", "bfloat16", "float16")
LOCAL_LAUNCHERS = ("basic", "joblib", "local_parallel", "submitit_local")   # hydra/launcher=...: jobs run here


@dataclass
class RootConfig:
    task: str = "smoke"                 # the experiment that runs (set by +experiment=NAME)
    seed: int = 0                       # msbd.seed defaults to this
    device: str = "cpu"                 # cpu | cuda | cuda:1 | mps
    dtype: str = "float32"              # float32 | bfloat16 | float16 (of the UNet, VAE and text encoder)
    threads: int = 0                    # torch CPU threads (0 = torch's default)
    progress: bool = True               # tqdm bars
    output_dir: str = "${hydra:runtime.output_dir}"
    sweep_name: str = "default"         # multirun folder: multirun/<task>/<sweep_name>/<overrides>
    image: Optional[str] = None          # the user's image, mask, prompt and output (+experiment=edit)
    mask: Optional[str] = None
    prompt: str = ""
    output: Optional[str] = None
    model: ModelSpec = field(default_factory=ModelSpec)
    msbd: MSBDConfig = field(default_factory=MSBDConfig)


def _schema() -> type:
    """RootConfig plus one typed node per experiment (`demo:`, `edit:`, ...), each its module's `Params`."""
    fields = [(name, load_experiment(name).Params, field(default_factory=load_experiment(name).Params))
              for name in EXPERIMENTS]
    return dataclasses.make_dataclass("Config", fields, bases=(RootConfig,))


ConfigStore.instance().store(name="schema", node=_schema())


def _torch_dtype(name: str):
    import torch
    if name not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, name)


def _check_device(name: str, here: bool = True) -> None:
    import torch
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"device {name!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
    if here and device.type == "cuda" and not torch.cuda.is_available():   # here=False: runs on another machine
        raise InputError(f"device={name} but CUDA is not available here; use device=cpu")
    if here and device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"device={name} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                         f"use device=cuda:0")


def _check_dtype(dtype: str, device_name: str, here: bool = True) -> None:
    """Half precision only where it is fast: float16 on a GPU, bfloat16 on the CPU or a GPU that supports it."""
    import torch
    device = torch.device(device_name)
    if dtype == "float16" and device.type == "cpu":
        raise InputError("dtype=float16 on device=cpu: the CPU has no fast half precision (and some ops lack fp16 "
                         "kernels); use dtype=float32 or dtype=bfloat16, or device=cuda")
    if here and dtype == "bfloat16" and device.type == "cuda" and torch.cuda.is_available() \
            and not torch.cuda.is_bf16_supported(including_emulation=False):
        major, minor = torch.cuda.get_device_capability(device)
        raise InputError(f"dtype=bfloat16 needs a GPU of compute capability 8.0 or newer (this one: {major}.{minor}); "
                         f"use dtype=float16")


def check(cfg: DictConfig, device_here: bool = True) -> tuple[Any, Any]:
    """Every static check of a composed config (no folder is touched): (typed config object, experiment params)."""
    if cfg.task not in EXPERIMENTS:
        raise InputError(f"unknown task {cfg.task!r}; known: {', '.join(sorted(EXPERIMENTS))}")
    _torch_dtype(cfg.dtype)
    _check_device(cfg.device, here=device_here)
    _check_dtype(cfg.dtype, cfg.device, here=device_here)
    if cfg.threads < 0:
        raise InputError(f"threads must be >= 0, got {cfg.threads}")
    if cfg.seed < -1:
        raise InputError(f"seed must be an integer >= 0, or -1 for a random seed, got {cfg.seed}")
    plain = cfg.copy()
    plain.output_dir = "."                               # the hydra: resolver only exists inside a Hydra run
    obj = OmegaConf.to_object(plain)
    try:
        obj.msbd.validate()
    except ValueError as err:
        raise InputError(f"invalid setting msbd.{err}") from None
    params = getattr(obj, cfg.task)
    if hasattr(params, "validate"):
        params.validate()
    if getattr(load_experiment(cfg.task), "USES_MODEL", True):
        model_files(obj.model, obj.msbd)                 # every weights file exists (one line naming the key)
        multiple = ldm_config_of(obj.model).size_multiple
        try:
            obj.msbd.check_multiples(multiple)           # whatever the image: grid.tile=100 fails on every image
        except ValueError as err:
            raise InputError(f"invalid setting msbd.{err}") from None
    return obj, params


def resolve_seeds(cfg: DictConfig) -> None:
    """Replace seed -1 ("random", as the reference) in `seed` and `msbd.seed` by one drawn seed, in place, so
    the run, config.yaml and the output's metadata all carry the seed actually used; says so on stdout."""
    drawn = resolve_seed(-1)
    for key in ("seed", "msbd.seed"):
        if OmegaConf.select(cfg, key) == -1:
            OmegaConf.update(cfg, key, drawn)
            print(f"{key}=-1: drew seed {drawn}")


def run_task(cfg: DictConfig) -> Path | None:
    """Run `cfg.task` into `cfg.output_dir`; returns the folder (None when it was already complete)."""
    out_dir = Path(cfg.output_dir)
    if (out_dir / DONE_MARKER).exists():
        print(f"skipped {out_dir}: complete ({DONE_MARKER} exists)")
        return None
    resolve_seeds(cfg)
    obj, params = check(cfg)
    dtype = _torch_dtype(cfg.dtype)
    if cfg.threads:
        import torch
        torch.set_num_threads(cfg.threads)
    msbd_config: MSBDConfig = obj.msbd
    module = load_experiment(cfg.task)
    ctx = RunContext(out_dir=out_dir, seed=cfg.seed, model=obj.model, msbd=msbd_config, dtype=dtype,
                     device=cfg.device, progress=cfg.progress)
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    summary = module.run(ctx, params) or {}
    # the marker is written atomically, last: its presence means every output above is complete
    write_json(out_dir / DONE_MARKER, {"task": cfg.task, "seconds": round(time.perf_counter() - t0, 1),
                                       "summary": summary})
    return out_dir


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> Any:
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*NumPy array is not writable.*")
            out = run_task(cfg)
    except (InputError, ValueError, FileNotFoundError) as err:
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted (no DONE marker written; run the same command again to redo this run)",
              file=sys.stderr)
        sys.exit(130)
    if out is not None:
        print(f"wrote {out}")


def precheck(argv: list[str]) -> None:
    """Compose every job of the command line before Hydra runs: a bad override is one line and exit 2.

    Hydra's own report of a misspelled key is several lines with a traceback hint; this catches the same errors
    first (for multirun, every combination of the sweep) and reports the first one on one line.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    overrides = [a for a in argv if not a.startswith("-")]
    # sweeps: a cluster launcher (hydra/launcher=slurm) runs the jobs on other machines, so a GPU-less login node
    # must not reject device=cuda; each job checks its device on its node (run_task -> check)
    remote = any(a.split("=", 1)[0].lstrip("+~") == "hydra/launcher" and a.split("=", 1)[-1] not in LOCAL_LAUNCHERS
                 for a in overrides)
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return                                          # --help, --cfg, ...: leave them to Hydra
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
        with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
            for job in jobs[:64]:
                check(compose("config", overrides=[o for o in job if not o.startswith(("hydra.", "hydra/"))]),
                      device_here=not remote)
    except (InputError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001  (a composition failure: misspelled key, wrong type, unknown option)
        print(f"error: {composition_message(err)}", file=sys.stderr)
        sys.exit(2)


def hydra_quote(text: str) -> str:
    r"""`text` as one Hydra quoted value that composes back to exactly `text`, whatever it holds.

    Hydra's override grammar reserves characters (an emoji stops its lexer; `,` `[` `=` ... have meanings) but
    takes anything inside quotes. In a quoted value a backslash escapes only a quote or the end of the value,
    and OmegaConf then reads `${` as an interpolation, `\${` as an escaped one: so a quote becomes `\'`,
    backslashes before a quote, the end or `${` are doubled, and `${` becomes `\${`.
    """
    out, backslashes = [], 0
    for k, ch in enumerate(text):
        if ch == "\\":
            backslashes += 1
            continue
        if ch == "'":
            out.append("\\" * (2 * backslashes) + "\\'")
        elif ch == "$" and text.startswith("${", k):
            out.append("\\" * (2 * backslashes) + "\\$")
        else:
            out.append("\\" * backslashes + ch)
        backslashes = 0
    return "'" + "".join(out) + "\\" * (2 * backslashes) + "'"


def _is_hydra_quoted(value: str) -> bool:
    """The user quoted the value for Hydra already (prompt="'a, b'"): it starts with a quote and parses."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    if value[:1] not in ("'", '"'):
        return False
    try:
        OverridesParser.create().parse_override(f"prompt={value}")
    except Exception:  # noqa: BLE001  (not a valid quoted value: take it as text)
        return False
    return True


def prompt_overrides(argv: list[str]) -> list[str]:
    """Turn `prompt=TEXT` (any key ending in `prompt`) into Hydra's quoted form, and `prompt_file=PATH` into
    `prompt=` the file's text (UTF-8, surrounding whitespace stripped), so any prompt can be given."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key == "prompt_file":
            try:
                text = Path(value).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as err:
                reason = getattr(err, "strerror", None) or "not UTF-8 text"
                raise InputError(f"prompt_file={value}: cannot read it ({reason})") from None
            out.append(f"prompt={hydra_quote(text)}")
        elif eq and key.lstrip("+").split(".")[-1] == "prompt" and not _is_hydra_quoted(value):
            out.append(f"{key}={hydra_quote(value)}")
        else:
            out.append(arg)
    return out


if __name__ == "__main__":
    try:
        sys.argv[1:] = prompt_overrides(sys.argv[1:])
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    precheck(sys.argv[1:])
    main()
