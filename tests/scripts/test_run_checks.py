"""scripts/run.py in-process: any prompt reaches the config unchanged (quoted before Hydra parses it),
prompt_file=, and settings checked up front whatever the image (one `error:` line, exit 2). Issue 23."""
import importlib.util
import os
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def run_py():
    spec = importlib.util.spec_from_file_location("msbd_run_script", os.path.join(ROOT, "scripts", "run.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:44] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return [f"image={tmp_path / 'in.png'}", f"mask={tmp_path / 'mask.png'}", f"output={tmp_path / 'out.png'}"]


PROMPTS = [
    "a grinning face \U0001F600",
    "it's a 'quoted' \"word\"",
    "a, b = [c] {d} (e) ~f +g @h #i %j",
    "${oc.env:HOME} and ${x} and $ {y}",
    "back\\slash, trailing \\",
    "\\'",
    "\\${x}",
    "two\nlines\tand\ttabs",
    "   ",
    "null",
    "123",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_any_prompt_composes_back_unchanged(run_py, prompt):
    argv = run_py.prompt_overrides(["+experiment=edit", f"prompt={prompt}"])
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        cfg = compose("config", overrides=argv)
    assert cfg.prompt == prompt and cfg.edit.prompt == prompt


def test_prompt_file_and_already_quoted_prompts(run_py, tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text("a \U0001F600 face, 'smiling'\n", encoding="utf-8")
    argv = run_py.prompt_overrides(["+experiment=edit", f"prompt_file={path}", "edit.prompt='kept, as quoted'"])
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        cfg = compose("config", overrides=argv)
    assert cfg.prompt == "a \U0001F600 face, 'smiling'" and cfg.edit.prompt == "kept, as quoted"
    with pytest.raises(run_py.InputError, match=r"^prompt_file=.*nope\.txt: cannot read it"):
        run_py.prompt_overrides([f"prompt_file={tmp_path / 'nope.txt'}"])


@pytest.mark.parametrize("override, words", [
    ("msbd.first_stage.guidance=nan", "msbd.first_stage.guidance must be a finite number"),
    ("msbd.margin=inf", "msbd.margin must be a finite number"),
    ("msbd.first_stage.eta=1.2", "msbd.first_stage.eta must be <= 1.0455"),
    ("seed=-2", "seed must be an integer >= 0, or -1"),
    ("msbd.seed=-7", "msbd.seed must be an integer >= 0, or -1"),
    # the image (64 px) has no grid stage and no decoder tiles: rejected all the same (random model: multiple 4)
    ("msbd.grid.tile=50", "msbd.grid.tile must be a multiple of 4"),
    ("msbd.grid.overlap=10", "msbd.grid.overlap must be a multiple of 4"),
    ("msbd.decoder_opt.tile=30", "msbd.decoder_opt.tile must be a multiple of 4"),
])
def test_bad_settings_are_one_line_whatever_the_image(run_py, files, capsys, override, words):
    with pytest.raises(SystemExit) as exit_:
        run_py.precheck(["+experiment=edit", "model=random", "prompt=a cube", *files, override])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines


def test_seed_minus_one_passes_the_checks(run_py, files, capsys):
    run_py.precheck(["+experiment=edit", "model=random", "prompt=a cube", *files, "seed=-1", "msbd.seed=-1"])
    assert capsys.readouterr().err == ""


def test_cli_edit_with_an_emoji_prompt_and_a_random_seed(files, tmp_path):
    """The whole command line: the prompt reaches the output's metadata unchanged; seed=-1 is drawn, printed,
    written into config.yaml and the PNG (issue 23 items 4 and 11)."""
    import subprocess
    prompt = "a grinning face \U0001F600, it's ${x}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "run.py"), "+experiment=edit",
                             "model=random", *files, f"prompt={prompt}", "seed=-1", f"output_dir={tmp_path / 'run'}",
                             "progress=false", "msbd.first_stage.steps=2", "msbd.first_stage.batch=1",
                             "msbd.first_stage.repaint_steps=0", "msbd.upscale.steps=4", "msbd.decoder_opt.enabled=false",
                             "msbd.upscale.mode=bilinear"],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    drawn = [line for line in result.stdout.splitlines() if line.startswith("seed=-1: drew seed ")]
    assert len(drawn) == 1
    seed = int(drawn[0].rsplit(" ", 1)[1])
    saved = Image.open(tmp_path / "out.png")
    assert saved.text["prompt"] == prompt and int(saved.text["seed"]) == seed
    assert f"seed: {seed}" in (tmp_path / "run" / "config.yaml").read_text()


def test_help_says_how_to_give_any_prompt():
    import subprocess
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "run.py"), "--help"], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "prompt_file=PATH" in result.stdout and "takes any text" in result.stdout
