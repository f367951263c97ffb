"""A live `scripts/app.py` server for the app tests: toy models with reduced steps, loopback only, a tmp folder.

The server is a subprocess on a free port (--port 0; the address is read from its first line) and is stopped
when the tests of the session are done.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# 3 first-stage steps, 4 upscaling steps (1 run at strength 0.4), 2 decoder-optimisation epochs: ~4 s an edit
REDUCED = ["msbd.first_stage.steps=3", "msbd.upscale.steps=4", "msbd.decoder_opt.iterations=2", "threads=1"]


class AppServer:
    def __init__(self, url: str, out: Path, process: subprocess.Popen) -> None:
        self.url, self.out, self.process = url, out, process

    def request(self, path: str, body: dict | bytes | None = None) -> tuple[int, dict | bytes]:
        """(status, JSON or bytes) of a GET (body None) or POST to the server."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        headers = {"content-type": "application/json"} if isinstance(body, dict) else {}
        req = urllib.request.Request(self.url + path, data=data, headers=headers,
                                     method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                status, raw, kind = response.status, response.read(), response.headers.get("content-type", "")
        except urllib.error.HTTPError as err:
            status, raw, kind = err.code, err.read(), err.headers.get("content-type", "")
        return status, json.loads(raw) if "json" in kind else raw

    def files(self) -> list[str]:
        """Every file under the app's folder, relative to it."""
        return sorted(str(p.relative_to(self.out)) for p in self.out.rglob("*") if p.is_file())


@pytest.fixture(scope="package")
def app_server(tmp_path_factory) -> AppServer:
    out = tmp_path_factory.mktemp("app")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "app.py"), "--port", "0", "--out", str(out),
                                *REDUCED], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        url = _address(process)
        # keep reading its output (warnings, a worker's traceback) so the pipe never fills and blocks it
        threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
        yield AppServer(url, out, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _address(process: subprocess.Popen, timeout_s: float = 180) -> str:
    """The http://127.0.0.1:PORT/ line the server prints once its models are loaded."""
    deadline, lines = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("the app server exited before it listened:\n" + "".join(lines))
        lines.append(line)
        found = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        if found:
            return found.group(1)
    raise RuntimeError("the app server printed no address in time:\n" + "".join(lines))
