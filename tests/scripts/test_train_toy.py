"""scripts/train_toy.py: bad options end in one `error:` line and exit code 2 before any training starts."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def train_toy():
    spec = importlib.util.spec_from_file_location("train_toy", os.path.join(ROOT, "scripts", "train_toy.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("override, words", [
    ("stages=[vea]", "unknown stage"), ("force=[all]", "unknown stage"), ("ldm.lr=abc", "lr must be float"),
    ("ldm.snr_gamma=-1", "snr_gamma"), ("ldm.decay_start=9000 ldm.max_steps=6800", "decay_start"),
    ("ldm.max_steps=-5", "ldm.max_steps must be >= 0"), ("sr.clean_prob=2", "clean_prob"),
    ("clip.max_minutes=0", "clip.max_minutes"), ("sr.max_steps=0", "sr.max_steps"), ("vae.batch_size=1.5", "batch_size"),
    ("ldm.nope=1", "nope"), ("threads=0", "threads"),
])
def test_bad_options_give_one_error_line(train_toy, capsys, override, words):
    with pytest.raises(SystemExit) as exit_info:
        train_toy.precheck(override.split())
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and words in err, err


def test_default_config_passes(train_toy, capsys):
    train_toy.precheck([])                         # no SystemExit
    train_toy.precheck(["stages=[clip]", "clip.max_minutes=22"])
    assert capsys.readouterr().err == ""
