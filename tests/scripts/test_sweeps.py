"""Sweeps of scripts/run.py: the joblib and submitit launchers run smoke jobs, a restarted sweep skips the runs
that completed (the DONE marker), the SLURM launcher config composes, a bad value in one combination fails fast.

Every sweep writes under tmp_path (hydra.sweep.dir=...); the jobs are `+experiment=smoke model=random` at 32 px.
"""
import json
import os
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = ["+experiment=smoke", "model=random", "smoke.size=32", "progress=false"]


def _run(*args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "run.py"), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout)


def _job_dirs(sweep_dir):
    """The run folders of a sweep (Hydra writes .hydra/ into each; .submitit/ is submitit's, not a run)."""
    return sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())


def _ok(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def test_joblib_sweep_runs_two_jobs(tmp_path):
    sweep = tmp_path / "joblib"
    result = _run("-m", *SMOKE, "smoke.steps=2", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                  "threads=1", f"hydra.sweep.dir={sweep}")
    _ok(result)
    dirs = _job_dirs(sweep)
    assert [d.name for d in dirs] == ["model=random,seed=0,smoke.size=32,smoke.steps=2",
                                      "model=random,seed=1,smoke.size=32,smoke.steps=2"]
    for d in dirs:
        assert (d / "smoke.png").is_file() and (d / "DONE").is_file()
        assert json.loads((d / "DONE").read_text())["task"] == "smoke"
        assert "threads: 1" in (d / "config.yaml").read_text()


def test_submitit_local_sweep_runs_two_jobs(tmp_path):
    sweep = tmp_path / "submitit"
    result = _run("-m", *SMOKE, "smoke.steps=2", "seed=0,1", "hydra/launcher=submitit_local",
                  "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
                  "threads=1", f"hydra.sweep.dir={sweep}")
    _ok(result)
    dirs = _job_dirs(sweep)
    assert len(dirs) == 2
    for d in dirs:
        assert (d / "smoke.png").is_file() and (d / "DONE").is_file()
    assert (sweep / ".submitit").is_dir()                # submitit's pickles and job logs, inside the sweep


def test_restarted_sweep_skips_completed_runs(tmp_path):
    sweep = tmp_path / "resume"
    args = ("-m", *SMOKE, "smoke.steps=1", "seed=0,1,2", f"hydra.sweep.dir={sweep}")
    _ok(_run(*args))
    dirs = _job_dirs(sweep)
    assert len(dirs) == 3 and all((d / "DONE").is_file() for d in dirs)
    # a killed sweep: one run did not finish (no DONE, no image)
    lost = dirs[1]
    (lost / "DONE").unlink()
    (lost / "smoke.png").unlink()
    before = {d: (d / "DONE").stat().st_mtime_ns for d in dirs if d != lost}
    result = _run(*args)
    _ok(result)
    assert _job_dirs(sweep) == dirs                      # the same folders: the sweep dir is deterministic
    for d, mtime in before.items():
        assert (d / "DONE").stat().st_mtime_ns == mtime
        assert f"skipped {d}: complete" in result.stdout
    assert result.stdout.count("skipped ") == 2
    assert (lost / "DONE").is_file() and (lost / "smoke.png").is_file()
    assert f"wrote {lost}" in result.stdout


def test_slurm_launcher_config_composes(tmp_path):
    # the command line: --cfg hydra prints the hydra node without launching anything
    result = _run(*SMOKE, "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra")
    _ok(result)
    launcher = yaml.safe_load(result.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["gpus_per_node"] == 1 and launcher["tasks_per_node"] == 1 and launcher["nodes"] == 1
    assert launcher["cpus_per_task"] == 8 and launcher["mem_gb"] == 32 and launcher["timeout_min"] == 120
    assert launcher["partition"] == "gpu" and launcher["array_parallelism"] == 16
    assert launcher["submitit_folder"].startswith("${hydra.sweep.dir}/")
    # the compose API: every launcher choice composes, and the SLURM launcher's parameters resolve
    script = f"""
import json, runpy, sys
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
runpy.run_path({os.path.join(ROOT, "scripts", "run.py")!r}, run_name="not_main")   # registers the schema
out = {{}}
with initialize_config_dir(config_dir={os.path.join(ROOT, "configs")!r}, version_base="1.3"):
    for name in ("basic", "joblib", "local_parallel", "submitit_local", "slurm"):
        cfg = compose("config", overrides=["+experiment=smoke", "hydra/launcher=" + name], return_hydra_config=True)
        out[name] = cfg.hydra.launcher._target_
    launcher = instantiate(cfg.hydra.launcher)
    out["params"] = launcher.params
    out["sweep_dir"] = cfg.hydra.sweep.dir
print(json.dumps(out))
"""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=120)
    _ok(result)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["joblib"].endswith("JoblibLauncher") and out["local_parallel"].endswith("JoblibLauncher")
    assert out["submitit_local"].endswith("LocalLauncher") and out["slurm"].endswith("SlurmLauncher")
    params = out["params"]
    assert params["name"] == "msbd-smoke" and params["partition"] is None
    assert params["submitit_folder"] == "multirun/smoke/default/.submitit/%j" == out["sweep_dir"] + "/.submitit/%j"
    assert params["gpus_per_node"] == 1 and params["mem_gb"] == 32 and params["timeout_min"] == 120


def test_bad_value_in_one_combination_fails_before_any_job(tmp_path):
    sweep = tmp_path / "bad"
    for launcher in ("basic", "joblib"):
        result = _run("-m", *SMOKE, "smoke.steps=2,-1", f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}")
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "smoke.steps" in lines[0], result.stderr
        assert "Traceback" not in result.stderr
        assert not sweep.exists()                        # not even multirun.yaml: no job ran, no folder


def test_precheck_leaves_the_gpu_check_to_cluster_jobs():
    """device=cuda on a GPU-less login node: rejected for local launchers, accepted for hydra/launcher=slurm
    (each SLURM job checks its own device). Calls run.precheck only: nothing is submitted."""
    script = f"""
import runpy, sys, torch
if torch.cuda.is_available():
    print("skip"); sys.exit(0)
run = runpy.run_path({os.path.join(ROOT, "scripts", "run.py")!r}, run_name="not_main")
base = ["-m", "+experiment=smoke", "model=random", "device=cuda", "seed=0,1"]
run["precheck"](base + ["hydra/launcher=slurm"])                 # returns: nothing to report
print("slurm ok", flush=True)
run["precheck"](base + ["hydra/launcher=joblib"])                # exits 2: CUDA is not available here
"""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=120)
    if result.stdout.strip() == "skip":
        pytest.skip("CUDA is available here: nothing to reject")
    assert result.stdout.strip() == "slurm ok", result.stdout + result.stderr
    assert result.returncode == 2 and "CUDA is not available" in result.stderr, result.stderr
