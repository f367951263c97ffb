"""The web app's edit queue: one edit at a time per server, the others wait in order; progress and cancelling.

An `EditJob` holds what a request validated (file paths inside the app's output folder, the prompt, the config)
and what the page polls: its state, its place in the queue, the stage and step it is at, and its results. The
`JobQueue` runs the jobs on one worker thread through `msbd.cli_edit.edit`, whose `on_stage` / `on_step` hooks
update the progress and raise `Cancelled` when the page asked to stop (between two UNet calls).
"""
from __future__ import annotations

import itertools
import queue
import re
import shutil
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldm.sampling.schedule import repaint_schedule, sdedit_start
from msbd.cli_edit import edit, save_intermediates
from msbd.config import MSBDConfig
from msbd.crop import CropPlan, stage_sizes
from msbd.errors import InputError
from msbd.models import ModelBundle
from msbd.pipeline import EditResult, _ceil64

TILES = re.compile(r"tiles (\d+)-(\d+)/(\d+)")
_ORDER = itertools.count()


class Cancelled(Exception):
    """Raised inside the pipeline's hooks when the page cancelled the edit."""


def expected_calls(config: MSBDConfig, stage: int) -> int:
    """UNet calls of stage `stage` (0 = first) or of one grid chunk: the sampler's denoising steps."""
    fs, up = config.first_stage, config.upscale
    if stage == 0:
        n_run = fs.steps if fs.strength == 1.0 else sdedit_start(fs.strength, fs.steps).num_steps_run
        return sum(op[0] == "denoise" for op in repaint_schedule(n_run, fs.repaint_steps, fs.repaint_jump))
    return sdedit_start(up.strength, up.steps).num_steps_run


@dataclass
class Progress:
    stage: int = 0                  # 0-based index of the running stage (first stage = 0)
    n_stages: int = 1               # first stage + the upscaling ladder
    stage_name: str = ""
    steps_done: int = 0             # UNet calls in the current stage (or grid chunk)
    steps_total: int = 0            # expected calls (latent fusion runs past it: a call per tile chunk a step)
    tiles_done: int = 0
    tiles_total: int = 0


@dataclass
class EditJob:
    id: str
    folder: Path                    # out_dir/jobs/<id>: input, mask, output.png, intermediates/
    image_path: Path
    mask_path: Path
    prompt: str
    config: MSBDConfig
    plan: CropPlan
    state: str = "queued"           # queued | running | done | error | cancelled
    message: str = ""
    progress: Progress = field(default_factory=Progress)
    result: dict[str, Any] | None = None
    files: dict[str, Path] = field(default_factory=dict)   # name -> file the page may fetch
    notes: list[str] = field(default_factory=list)         # warnings of the validation (a truncated prompt)
    cancel: threading.Event = field(default_factory=threading.Event)
    order: int = field(default_factory=lambda: next(_ORDER))    # submission order (the queue's)

    @property
    def output_path(self) -> Path:
        return self.folder / "output.png"

    def stage_names(self) -> list[str]:
        up = self.config.upscale
        n = len(stage_sizes(self.plan.long_edge, _ceil64(self.config.first_stage.size), up.max_edgelen,
                            up.straight_to_grid))
        return ["first"] + [f"stage{k}" for k in range(1, n + 1)]


class JobQueue:
    """FIFO of edits run one at a time by a worker thread with `bundle`."""

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        self.jobs: dict[str, EditJob] = {}
        self.pending: queue.Queue[EditJob | None] = queue.Queue()
        self.lock = threading.Lock()
        self.running: EditJob | None = None
        self.worker = threading.Thread(target=self._work, name="msbd-edit-worker", daemon=True)
        self.worker.start()

    def submit(self, job: EditJob) -> None:
        with self.lock:
            self.jobs[job.id] = job
        job.progress.n_stages = len(job.stage_names())
        self.pending.put(job)

    def ahead_of(self, job: EditJob) -> int:
        """Edits that run before `job` (the running one included); 0 once it runs."""
        if job.state != "queued":
            return 0
        with self.lock:
            waiting = [j for j in self.jobs.values() if j.state == "queued" and j.order < job.order]
            return len(waiting) + (self.running is not None)

    def cancel(self, job: EditJob) -> None:
        job.cancel.set()
        if job.state == "queued":
            self._finish(job, "cancelled", "cancelled before it started")

    def stop(self) -> None:
        """Cancel everything and let the worker end (server shutdown)."""
        for job in list(self.jobs.values()):
            self.cancel(job)
        self.pending.put(None)

    # The worker -------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self.pending.get()
            if job is None:
                return
            if job.state != "queued":
                continue
            with self.lock:
                self.running, job.state = job, "running"
            try:
                self._run(job)
            except Cancelled:
                self._finish(job, "cancelled", "cancelled; nothing was written")
            except InputError as err:
                self._finish(job, "error", str(err))
            except Exception as err:  # noqa: BLE001  (shown in the page; the server keeps serving)
                traceback.print_exc()
                self._finish(job, "error", f"the edit failed: {type(err).__name__}: {str(err).splitlines()[0]}")
            finally:
                with self.lock:
                    self.running = None

    def _finish(self, job: EditJob, state: str, message: str) -> None:
        job.state, job.message = state, message
        if state != "done":      # an unfinished edit leaves no files behind but its inputs
            job.output_path.unlink(missing_ok=True)
            shutil.rmtree(job.folder / "intermediates", ignore_errors=True)

    def _run(self, job: EditJob) -> None:
        names, prog, config = job.stage_names(), job.progress, job.config

        def on_stage(name: str) -> None:
            # "first", "stage2", "stage2: tiles 1-4/9", "stage2: decoder optimisation", "paste"
            if job.cancel.is_set():
                raise Cancelled
            head, tiles = name.split(":")[0], TILES.search(name)
            if head in names and name == head:                     # a stage starts
                prog.stage, prog.tiles_done, prog.tiles_total = names.index(head), 0, 0
            if tiles:                                               # a chunk of grid tiles starts
                prog.tiles_done, prog.tiles_total = int(tiles.group(1)) - 1, int(tiles.group(3))
            if name == "paste":
                prog.stage = len(names) - 1
            sampled = name.endswith("decoder optimisation") or name == "paste"    # the stage's sampling is done
            prog.steps_total = expected_calls(config, prog.stage)
            prog.steps_done = prog.steps_total if sampled else 0
            prog.tiles_done = prog.tiles_total if sampled else prog.tiles_done
            prog.stage_name = name

        def on_step(_: int) -> None:
            prog.steps_done += 1
            on_tick()

        def on_tick() -> None:                                      # also between decoder-optimisation steps
            if job.cancel.is_set():
                raise Cancelled

        result = edit(job.image_path, job.mask_path, job.prompt, job.output_path, config, self.bundle,
                      progress=False, on_stage=on_stage, on_step=on_step, on_tick=on_tick)
        self._publish(job, result, config)

    def _publish(self, job: EditJob, result: EditResult, config: MSBDConfig) -> None:
        """Intermediates for the page (candidates with scores, every stage: the paper's Figure 3) and the result."""
        folder = job.folder / "intermediates"
        save_intermediates(result, folder, config.reference_quirks.truncate_uint8)
        candidates = [{"file": f"candidate_{k}.png",
                       "score": None if result.scores is None else round(result.scores[k], 4),
                       "chosen": k == result.chosen} for k in range(len(result.candidates))]
        stages = []
        for k, stage in enumerate(result.stages):
            name = f"stage_{k}_{stage.name.split()[0]}.png"
            stages.append({"file": name, "name": stage.name, "seconds": round(stage.seconds, 2),
                           "size": list(stage.image.shape[-2:]), "tiles": f"{stage.tiles_run}/{stage.tiles_total}"})
        job.files = {p.name: p for p in folder.glob("*.png")}
        job.files["output.png"] = job.output_path
        job.result = {"candidates": candidates, "stages": stages, "seed": result.seed,
                      "seconds": round(result.timings.get("total", 0.0), 2), "size": list(result.image.shape[:2])}
        job.progress.stage, job.progress.steps_done = job.progress.n_stages - 1, job.progress.steps_total
        job.progress.tiles_done = job.progress.tiles_total
        job.state, job.message = "done", f"done in {job.result['seconds']:.1f} s (seed {result.seed})"
