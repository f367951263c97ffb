"""The shipped toy weights stay within issue 18's budget: 64 MB in all, subfolders included."""
import os

from msbd.toy import presets

BUDGET_BYTES = 64_000_000


def test_shipped_weights_fit_the_budget():
    files = [os.path.join(d, f) for d, _, names in os.walk(presets.WEIGHTS_DIR) for f in names]
    assert any(f.endswith(".safetensors") for f in files)
    size = sum(os.path.getsize(f) for f in files)
    assert size <= BUDGET_BYTES, f"{size / 1e6:.1f} MB in {presets.WEIGHTS_DIR}"
