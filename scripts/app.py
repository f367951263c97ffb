"""Edit in the browser: a local web app (msbd.app) on the same pipeline as `scripts/run.py +experiment=edit`.

    python scripts/app.py                                   # embedded toy models, http://127.0.0.1:7860/
    python scripts/app.py --port 8000 model=sd-v1 model.ckpt=PATH model.upscaler=PATH model.reranker=PATH \
        device=cuda dtype=float16
    python scripts/app.py msbd.first_stage.steps=10 msbd.upscale.steps=20   # any msbd.* default, as in run.py

Everything after the options is a Hydra override of `configs/config.yaml` (model group, device, dtype, threads,
msbd.* knobs), checked as run.py checks it; a bad one is one `error:` line and exit code 2. The server listens on
loopback unless --host says otherwise, writes only under --out (default outputs/app), runs one edit at a time and
prints its address once the models are loaded.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from msbd.errors import InputError, composition_message  # noqa: E402


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Other arguments: Hydra overrides (model=sd-v1, device=cuda, msbd.*=...)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860, help="port (0 = any free one; default 7860)")
    parser.add_argument("--out", default="outputs/app", help="the app's folder: uploads and edits (outputs/app)")
    parser.add_argument("--max-upload-mb", type=int, default=200, help="largest accepted upload in MB (200)")
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        parser.error(f"unknown option {unknown[0]}")
    if not 0 <= args.port <= 65535 or args.max_upload_mb < 1:
        parser.error("--port must be in 0..65535 and --max-upload-mb >= 1")
    return args, overrides


def load(overrides: list[str]):
    """AppSettings from the overrides: composed and checked as scripts/run.py does, the models loaded."""
    import run  # scripts/run.py: the schema (ConfigStore) and its checks
    import torch
    from hydra import compose, initialize_config_dir

    from experiments.common import load_bundle
    from msbd.app import AppSettings
    try:
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose("config", overrides=run.prompt_overrides(overrides))
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001  (a composition failure: misspelled key, wrong type, unknown option)
        raise InputError(composition_message(err)) from None
    obj, _ = run.check(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    bundle = load_bundle(obj.model, obj.msbd, run._torch_dtype(cfg.dtype), cfg.device)
    try:
        obj.msbd.check_multiples(bundle.size_multiple)
    except ValueError as err:
        raise InputError(f"invalid setting msbd.{err}") from None
    return AppSettings(bundle, obj.msbd, Path(), obj.model.name)


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as err:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {getattr(err, 'strerror', None) or err}") from None
    sock.listen(64)
    return sock


def main(argv: list[str]) -> None:
    args, overrides = parse(argv)
    try:
        settings = load(overrides)
        settings.out_dir, settings.max_upload_bytes = Path(args.out), args.max_upload_mb * 2**20
        sock = listen(args.host, args.port)
    except (InputError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    import uvicorn

    from msbd.app import create_app
    app = create_app(settings)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"msbd app ({settings.model_name} models) on http://{shown}:{port}/  (writes under {args.out}; "
          f"Ctrl+C stops it)", flush=True)
    if host not in ("127.0.0.1", "::1", "localhost"):
        print(f"note: listening on {host}, not loopback only: anyone who can reach this machine can use the app",
              flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
