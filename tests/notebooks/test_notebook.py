"""notebooks/InteractiveEditing.ipynb runs headlessly, top to bottom, on tiny random weights (nbclient, python3 kernel).

The parameters are injected papermill-style: a cell right after the one tagged "parameters" overrides them.
Some check cells are appended and run in the same kernel. They exercise the mask helpers and the upload widget's
callback without a frontend, and report which interpreter the kernel runs.
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "InteractiveEditing.ipynb"
SEED, SIZE = 0, 96
CELL_TIMEOUT = 120  # seconds per cell; the whole run takes about 15 s

CHECKS = """
import datetime, io, json, sys
from PIL import Image as _Image
_buf = io.BytesIO()
_Image.fromarray(case.mask.astype(np.uint8) * 255).save(_buf, format="PNG")
_checks = {"python": sys.executable, "prefix": sys.prefix,
           "upload_equal": bool(np.array_equal(mask_from_file_bytes(_buf.getvalue(), "m.png"), case.mask))}
try:
    mask_from_file_bytes(b"not an image", "notes.png")
except InputError as _err:
    _checks["bad_upload"] = str(_err)
_rgba = np.zeros((8, 10, 4), np.uint8)
_rgba[2:4, 3:6, 3] = 255
_rgba[5, 5, 3] = 100  # faint antialiasing: not painted
_checks["strokes"] = np.argwhere(mask_from_strokes(_rgba, (24, 30))).tolist()
if widgets is not None:
    _box = np.zeros(image.shape[:2], bool)
    _box[10:40, 20:50] = True
    _buf = io.BytesIO()
    _Image.fromarray(_box.astype(np.uint8) * 255).save(_buf, format="PNG")
    _data = _buf.getvalue()
    upload.value = ({"name": "box.png", "type": "image/png", "size": len(_data), "content": memoryview(_data),
                     "last_modified": datetime.datetime.now()},)
    _checks["uploaded_into_mask"] = bool(np.array_equal(mask, _box))
    use_button.click()  # nothing drawn, no frontend: a message, no exception
print(json.dumps(_checks))
"""


def _kernel_python() -> str:
    """The interpreter of the python3 kernelspec, as jupyter_client starts it."""
    from jupyter_client.kernelspec import find_kernel_specs, get_kernel_spec
    specs = find_kernel_specs()
    if "python3" not in specs:
        pytest.fail(f"no python3 kernelspec (found {sorted(specs)}); install ipykernel into {sys.prefix}")
    argv0 = get_kernel_spec("python3").argv[0]
    # jupyter_client replaces a bare python / python3 / python3.X by sys.executable (ipykernel's native spec)
    if argv0 in {"python", f"python{sys.version_info[0]}", "python%i.%i" % sys.version_info[:2]}:
        return sys.executable
    return argv0


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("notebook_out")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    params = (f'MODEL = "random"\nSIZE = {SIZE}\nSEED = {SEED}\nFIRST_STAGE_BATCH = 2\nFIRST_STAGE_STEPS = 4\n'
              f'UPSCALE_STEPS = 4\nDECODER_OPT = 2\nOVERRIDES = {{"first_stage": {{"repaint_steps": 1}}}}\n'
              f'OUT_DIR = {str(out_dir)!r}')
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(params, metadata={"tags": ["injected-parameters"]}))
    nb.cells.append(nbformat.v4.new_code_cell(CHECKS))
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT, allow_errors=False,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    return nb, out_dir


def test_notebook_is_stored_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])


def test_kernel_is_this_python():
    assert Path(_kernel_python()).absolute() == Path(sys.executable).absolute()


def test_runs_without_errors(executed):
    nb, _ = executed
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0]["ename"] + ": " + errors[0]["evalue"]
    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 4  # input/mask, candidates, stages, input/result


def test_output_matches_input_outside_mask(executed):
    from experiments.common import toy_case
    _, out_dir = executed
    case = toy_case(SEED, SIZE)
    with Image.open(out_dir / "edit.png") as img:
        assert img.size == (case.image.shape[1], case.image.shape[0])
        assert img.text["prompt"] == "a red star" and json.loads(img.text["config"])["seed"] == SEED
        edited = np.asarray(img.convert("RGB"))
    assert np.array_equal(edited[~case.mask], case.image[~case.mask])
    assert not np.array_equal(edited[case.mask], case.image[case.mask])
    with Image.open(out_dir / "mask.png") as img:
        assert np.array_equal(np.asarray(img) > 127, case.mask)


def test_mask_helpers_and_kernel(executed):
    nb, _ = executed
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    checks = json.loads(text.strip().splitlines()[-1])
    assert Path(checks["python"]).absolute() == Path(sys.executable).absolute()
    assert checks["prefix"] == sys.prefix
    assert checks["upload_equal"]
    assert "notes.png" in checks["bad_upload"] and "/tmp" not in checks["bad_upload"]
    # alpha >= 128 at rows 2:4, cols 3:6 of 8 x 10, scaled x3 with nearest neighbour
    assert checks["strokes"] == [[r, c] for r in range(6, 12) for c in range(9, 18)]
    if "uploaded_into_mask" in checks:
        assert checks["uploaded_into_mask"]
