"""bench/decoder_opt_isolated.py: measures on a constructed stage, and a smoke run at its smallest."""
import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "bench"))

import decoder_opt_isolated as bench  # noqa: E402


def _capture(sample):
    torch.manual_seed(0)
    ref = torch.rand(1, 3, 64, 64) * 0.2 + 0.4
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    return {"sample": sample(ref), "ref": ref, "mask": mask, "max_edgelen": 64, "colour": 0, "short": 256}


def test_an_exact_stage_has_no_seam_and_no_halo_and_a_shifted_one_has_both():
    exact = _capture(lambda ref: ref.clone())
    m, _ = bench.measure(exact["sample"], exact)
    assert abs(m["seam"] - 1) < 1e-6 and m["halo_colour"] < 5 and abs(m["halo_texture"] - 1) < 0.15  # noise only
    shifted = _capture(lambda ref: (ref + 0.2).clamp(0, 1))
    s, composite = bench.measure(shifted["sample"], shifted)
    assert s["seam"] > 1.5 and s["halo_colour"] > 50               # 0.2 of 255 on each channel: 51 * sqrt(3)
    assert (composite[:16] == bench.to_u8(shifted["ref"])[:16]).all()  # outside the mask: the reference


@pytest.mark.slow
def test_smoke_run_writes_rows_and_a_table(tmp_path):
    cmd = [sys.executable, os.path.join(REPO, "bench", "decoder_opt_isolated.py"), "--tasks", "0", "--size", "256",
           "--iterations", "1", "--variants", "full", "default", "off", "--threads", "1", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "rows_256px_1it.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["full", "default", "off"]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "variant" not in line]
    assert [line.split("|")[1].strip() for line in table] == ["full", "default", "off"]
    assert "| inf |" in table[0]                                   # full against itself
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,    # resumes: nothing new
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert again.returncode == 0 and len((tmp_path / "rows_256px_1it.jsonl").read_text().splitlines()) == 3
    assert [p.name for p in tmp_path.glob("capture_*.pt")] == ["capture_task0_256_1it.pt"]   # keyed by iterations
