"""The web app's API over HTTP (the live server of conftest.py): the queue, cancelling, validation, file safety."""
from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _edit_form(app_server, **changes) -> dict:
    """A valid edit of a rendered 256 px toy scene with its own mask."""
    status, scene = app_server.request("/api/toy-scene", {"task": 5, "size": 256})
    assert status == 200, scene
    _, overlay = app_server.request(scene["mask"])
    mask = np.asarray(Image.open(io.BytesIO(overlay)))[..., 3]
    form = {"upload_id": scene["upload_id"], "prompt": scene["prompt"], "margin": 1.2, "seed": 1, "batch": 2,
            "repaint_steps": 0, "fusion": "alpha", "decoder_opt": False,
            "mask_png": "data:image/png;base64," + base64.b64encode(_png(mask)).decode()}
    return {**form, **changes}


def _wait(app_server, job_id: str, until, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, state = app_server.request(f"/api/jobs/{job_id}")
        if until(state):
            return state
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached the state: {state}")


def test_one_edit_at_a_time_others_queued_and_cancelling_stops(app_server):
    # the first edit runs long (200 RePaint repeats of 3 steps: 203 UNet calls); the second waits behind it
    _, first = app_server.request("/api/edit", _edit_form(app_server, repaint_steps=100, batch=5))
    _, second = app_server.request("/api/edit", _edit_form(app_server))
    assert second["state"] == "queued" and second["ahead"] == 1
    assert second["message"] == "queued: 1 edit ahead of yours (this server runs one edit at a time)"
    _, cancelled = app_server.request(f"/api/jobs/{second['job_id']}/cancel", b"")
    assert cancelled["state"] == "cancelled"
    running = _wait(app_server, first["job_id"], lambda s: s["progress"]["steps_done"] >= 2)
    assert running["state"] == "running" and running["progress"]["steps_total"] == 203
    app_server.request(f"/api/jobs/{first['job_id']}/cancel", b"")
    stopped = _wait(app_server, first["job_id"], lambda s: s["state"] != "running", timeout_s=20)
    assert stopped["state"] == "cancelled" and stopped["progress"]["steps_done"] < 203
    for job in (first, second):
        assert sorted(p.name for p in (app_server.out / "jobs" / job["job_id"]).iterdir()) == ["mask.png"]
    # the queue goes on: a third edit runs to the end
    _, third = app_server.request("/api/edit", _edit_form(app_server))
    done = _wait(app_server, third["job_id"], lambda s: s["state"] in ("done", "error"))
    assert done["state"] == "done", done["message"]
    assert (app_server.out / "jobs" / third["job_id"] / "output.png").is_file()


def test_bad_settings_are_one_line_and_write_nothing(app_server):
    form = _edit_form(app_server)
    before = app_server.files()
    cases = {"seed": (1.5, "seed must be an integer, got 1.5"), "decoder_opt": ("yes", "decoder_opt must be true"),
             "margin": ("wide", "margin must be a number, got 'wide'"), "batch": (0, "first_stage.batch must be >= 1"),
             "repaint_steps": (-1, "repaint_steps must be >= 0"), "fusion": ("both", "fusion must be one of alpha"),
             "prompt": ("   ", "prompt is empty"), "mask_png": ("@@", "the mask could not be read"),
             "upload_id": ("../uploads", "unknown image")}
    for key, (value, words) in cases.items():
        status, answer = app_server.request("/api/edit", {**form, key: value})
        assert status == 400 and words in answer["error"] and "\n" not in answer["error"], (key, answer)
    status, answer = app_server.request("/api/edit", b"[1, 2]")
    assert status == 400 and "a JSON object of settings expected" in answer["error"]
    status, answer = app_server.request("/api/toy-scene", {"task": 1, "size": 10})
    assert status == 400 and "size in 128..4096" in answer["error"]
    assert app_server.files() == before


def test_the_page_cannot_reach_other_files(app_server):
    form = _edit_form(app_server)
    status, _ = app_server.request("/api/image?name=../../../escape.png", _png(np.zeros((64, 64, 3), np.uint8)))
    assert status == 200
    assert not list(app_server.out.parent.glob("escape*")) and not list(app_server.out.rglob("escape*"))
    probes = ["/api/uploads/..%2F..%2Fetc/preview.png", f"/api/uploads/{'0' * 32}/preview.png",
              "/static/..%2F..%2Fserver.py", "/static/../jobs.py", f"/api/jobs/{'f' * 32}",
              f"/api/uploads/{form['upload_id']}/..%2Fsource.png"]
    for path in probes:
        status, answer = app_server.request(path)
        assert status == 404, (path, answer)
    _, job = app_server.request("/api/edit", form)
    _wait(app_server, job["job_id"], lambda s: s["state"] in ("done", "error"))
    for name in ("mask.png", "..%2Fmask.png", "..%2F..%2Fuploads", "scores.json"):
        status, _ = app_server.request(f"/api/jobs/{job['job_id']}/files/{name}")
        assert status == 404, name
    status, png = app_server.request(f"/api/jobs/{job['job_id']}/files/output.png")
    assert status == 200 and Image.open(io.BytesIO(png)).text["prompt"] == form["prompt"]


def test_bad_command_line_is_one_error_line(tmp_path):
    """model=sd-v1 without its weights (the checks are scripts/run.py's): one `error:` line, exit 2, no folder."""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, str(root / "scripts" / "app.py"), "--out", str(tmp_path / "app"),
                             "model=sd-v1"], check=False, capture_output=True, text=True, timeout=120, cwd=root,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and result.stderr.startswith("error: model.ckpt: weights file"), result
    assert result.stderr.count("\n") == 1 and not (tmp_path / "app").exists()


def test_warnings_reach_the_page_without_the_apps_paths(app_server):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 3] = 128
    status, upload = app_server.request("/api/image?name=half.png", _png(rgba))
    assert status == 200 and upload["notes"] == ["image 'half.png' has transparent pixels; compositing it over white"]
    status, job = app_server.request("/api/edit", _edit_form(app_server, prompt="a red star " * 40))
    app_server.request(f"/api/jobs/{job['job_id']}/cancel", b"")
    assert status == 200 and len(job["notes"]) == 1 and "text encoder keeps the first 75" in job["notes"][0]
    assert str(app_server.out) not in job["notes"][0]
