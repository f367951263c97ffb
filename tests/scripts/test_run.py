"""scripts/run.py: the smoke demo writes a PNG with its metadata; bad settings end in one line and exit code 2."""
import os
import subprocess
import sys

import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(tmp_path, *overrides):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "run.py"), "+experiment=smoke",
                           f"output_dir={tmp_path}", *overrides], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_smoke_demo_writes_png_with_metadata(tmp_path):
    result = _run(tmp_path, "smoke.steps=2", "smoke.size=32")
    assert result.returncode == 0, result.stderr
    image = Image.open(tmp_path / "smoke.png")
    assert image.size == (32, 32) and image.mode == "RGB"
    assert image.text["prompt"] == "a red triangle" and "smoke:" in image.text["config"]


def test_bad_settings_give_one_line_and_exit_2(tmp_path):
    cases = [("smoke.steps=-1", "smoke.steps"), ("dtype=float8", "dtype"), ("smoke.size=31", "size"),
             ("msbd.first_stage.bach=3", "bach"), ("model=nope", "model/nope"), ("dtype=float16", "dtype=float32")]
    if not torch.cuda.is_available():
        cases.append(("device=cuda", "device=cpu"))
    for override, words in cases:
        result = _run(tmp_path, override)
        assert result.returncode == 2, (override, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and words in lines[0], result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "smoke.png").exists()
