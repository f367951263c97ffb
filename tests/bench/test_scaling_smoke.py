"""bench/scaling.py at its smallest: one 512 px edit (a 2x2 grid stage) with random weights and a handful of steps,
and the failure path (a child whose address space is too small to import torch gives a FAILED row)."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "bench", "scaling.py")
TINY = ["--random-weights", "--threads", "1", "--first-steps", "2", "--upscale-steps", "10", "--decoder-iters", "1"]


def _run(*args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_scaling_smallest_size_prints_table_and_summary():
    out = _run("--sizes", "512", "--fusions", "latent", *TINY)
    assert "torch threads per child" in out and "random weights" in out
    rows = [line for line in out.splitlines() if line.strip().startswith("0.26")]
    assert len(rows) == 1 and "FAILED" not in rows[0], out
    assert "4/4" in rows[0]                                     # 320 px crop: 2x2 tiles of 192, all masked
    assert "(1) memory at the largest size" in out and "(2) log-log slope" in out
    assert "px changed outside the mask" not in out


def test_scaling_child_failure_is_a_row():
    out = _run("--sizes", "256", "--fusions", "alpha", "--max-gb", "0.5", *TINY)
    assert "FAILED" in out and "alpha FAILED" in out, out
