"""bench/gpu.py at its smallest: `--device cpu --tiny` writes the JSON with every part, and its numbers are sane.

On the CPU this checks the code paths and the JSON's layout only (tiny-test networks, 64-256 px images); the figures
that mean something come from a GPU (scripts/device_run.sh).
"""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gpu_bench_tiny_on_cpu_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "gpu.py"), "--device", "cpu", "--tiny",
                           "--out", str(out)], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    assert set(report) >= {"environment", "unet_step", "grid_batch", "edits", "edit_config", "part_seconds",
                           "seconds_total", "notes"}
    assert report["environment"]["device"] == "cpu" and report["environment"]["torch"]

    step = report["unet_step"]
    assert {(r["dtype"], r["channels_last"]) for r in step["rows"]} == {
        ("fp16", False), ("fp16", True), ("bf16", False), ("bf16", True)}
    assert step["gflop_per_call"] > 0
    for row in step["rows"]:
        assert row["ours_ms"] > 0 and row["diffusers_ms"] > 0 and row["ours_tflops"] > 0 and row["finite"]
        assert 0 <= row["max_rel_diff"] < 0.1                 # the same weights: equal up to half precision

    grid = report["grid_batch"]
    if "skipped" in grid:                                     # GridConfig without `batch` (issue 17 item 4)
        assert "batch" in grid["skipped"]
    else:
        assert [r["grid.batch"] for r in grid["rows"]] == [1, 0]
        assert all(r["grid_stage_seconds"] > 0 and r["tiles"][0] > 1 for r in grid["rows"])
        assert grid["grid_output_max_abs_diff"] >= 0

    edits = report["edits"]
    assert [e["side"] for e in edits] == [64, 128, 256]
    for e in edits:
        assert e["seconds"] > 0 and e["peak_bytes"] > 0 and e["estimate_bytes"] > 0 and e["model_calls"] > 0
        assert all(v >= 0 for v in e["stage_seconds"].values()) and e["stage_seconds"]["first"] > 0
        assert e["finite"] and e["outside_mask_identical"]
        assert any("grid" in name for name in e["stages"])    # every size reaches a grid stage (tile 48 px)
