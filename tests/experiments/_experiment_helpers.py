"""Compose an experiment's config the way scripts/run.py does and run it in-process into a test folder."""
import json
import os
import sys

from hydra import compose, initialize_config_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import run as run_script  # noqa: E402


def compose_experiment(tmp_path, experiment: str, *overrides: str):
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        return compose("config", overrides=[f"+experiment={experiment}", f"output_dir={tmp_path}", *overrides])


def run_experiment(tmp_path, experiment: str, *overrides: str, check: bool = False) -> dict:
    """Run to completion (optionally through run.py's static `check` first); the DONE marker's JSON."""
    cfg = compose_experiment(tmp_path, experiment, *overrides)
    if check:
        run_script.check(cfg)
    out = run_script.run_task(cfg)
    assert out == tmp_path and (tmp_path / "DONE").exists()
    return json.loads((tmp_path / "DONE").read_text())
