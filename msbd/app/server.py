"""The web app's HTTP side (FastAPI): uploads, validation, the edit queue's state, the files of finished edits.

Every request is checked with the command line's own code before anything is queued: `msbd.io.load_image` for an
uploaded image, `msbd.io.load_mask` for a painted or uploaded mask, and `msbd.cli_edit.prepare_edit` (prompt,
settings via `MSBDConfig.validate`, size multiple, memory) for an edit. A problem is one line in the page (HTTP 400,
`{"error": ...}`) and leaves no file behind: uploads are staged in `<out>/.staging/` and removed when they fail.

Files: the page never names a path. Uploads and edits get server-made ids (32 hex digits); an upload lives in
`<out>/uploads/<id>/`, an edit in `<out>/jobs/<id>/`, and the page can fetch only the files an edit published
(looked up by name in `EditJob.files`). Request bodies are capped at `max_upload_bytes`.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import re
import secrets
import shutil
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image

from msbd.app.jobs import EditJob, JobQueue
from msbd.cli_edit import prepare_edit
from msbd.config import FUSIONS, MSBDConfig, replace
from msbd.errors import InputError
from msbd.io import load_image, load_mask
from msbd.models import ModelBundle

STATIC = Path(__file__).parent / "static"
ID = re.compile(r"[0-9a-f]{32}")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
TOY_SIZES = (128, 4096)             # side range of a rendered toy scene


@dataclass
class AppSettings:
    bundle: ModelBundle
    config: MSBDConfig              # the server's defaults (model group + command-line overrides)
    out_dir: Path                   # everything the app writes lives under it
    model_name: str = "toy"
    max_upload_bytes: int = 200 * 2**20


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


def _new_id() -> str:
    return secrets.token_hex(16)


class Staging:
    """A folder under <out>/.staging that becomes the upload's or job's folder, or disappears on failure."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / ".staging" / _new_id()
        self.path.mkdir(parents=True)

    def keep(self, final: Path) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        self.path.rename(final)
        return final

    def drop(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _friendly(err: InputError, *paths_names: tuple[Path, str]) -> str:
    """The error's line with the app's own file paths replaced by what the user knows them as."""
    text = str(err)
    for path, name in paths_names:
        text = text.replace(str(path), name)
    return text


def _scrub(text: str, out: Path, name: str = "(uploaded)") -> str:
    """A warning's line with any path inside the app's folder replaced by `name`."""
    return re.sub(r"\S*" + re.escape(str(out)) + r"\S*", name, " ".join(text.split()))


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _mask_overlay(mask: np.ndarray) -> bytes:
    """White where the mask edits (>= 0.5), transparent elsewhere: what the page's brush layer holds."""
    alpha = np.where(mask >= 0.5, 255, 0).astype(np.uint8)
    return _png(np.dstack([np.full_like(alpha, 255)] * 3 + [alpha]))


def _number(form: dict, key: str, kind: type, default: Any) -> Any:
    value = form.get(key, default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise InputError(f"{key} must be true or false, got {value!r}")
    try:
        number = kind(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or (kind is int and isinstance(value, float) and value != int(value)):
        raise InputError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    return number


def edit_config(base: MSBDConfig, form: dict) -> MSBDConfig:
    """The server's config with the page's knobs; ranges are MSBDConfig.validate's (via prepare_edit)."""
    fs, fusion = base.first_stage, form.get("fusion", base.grid.fusion)
    if fusion not in FUSIONS:
        raise InputError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    return replace(base, margin=_number(form, "margin", float, base.margin),
                   seed=_number(form, "seed", int, base.seed),
                   first_stage={"batch": _number(form, "batch", int, fs.batch),
                                "repaint_steps": _number(form, "repaint_steps", int, fs.repaint_steps)},
                   grid={"fusion": fusion},
                   decoder_opt={"enabled": _number(form, "decoder_opt", bool, base.decoder_opt.enabled)})


class _Context:
    """What the routes share: the settings, the app's folder (resolved), the queue, and id -> folder lookups."""

    def __init__(self, settings: AppSettings) -> None:
        self.settings, self.out = settings, settings.out_dir.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.jobs = JobQueue(settings.bundle)

    async def body(self, request: Request) -> bytes:
        """The request's body, refused past max_upload_bytes."""
        chunks, size, limit = [], 0, self.settings.max_upload_bytes
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"upload too large (limit {limit // 2**20} MB)")
            chunks.append(chunk)
        return b"".join(chunks)

    def upload_folder(self, upload_id: str) -> Path:
        folder = self.out / "uploads" / upload_id if ID.fullmatch(upload_id) else None
        if folder is None or not folder.is_dir():
            raise HTTPException(404, "unknown image: upload it again")
        return folder

    @staticmethod
    def source_of(folder: Path) -> Path:
        return next(p for p in sorted(folder.iterdir()) if p.stem == "source")

    def job_of(self, job_id: str) -> EditJob:
        job = self.jobs.jobs.get(job_id) if ID.fullmatch(job_id) else None
        if job is None:
            raise HTTPException(404, "unknown edit")
        return job

    def new_upload(self, staging: Staging) -> str:
        upload_id = _new_id()
        staging.keep(self.out / "uploads" / upload_id)
        return upload_id


def create_app(settings: AppSettings) -> FastAPI:
    """The FastAPI app: the page (static files) and its JSON API over one `JobQueue`."""
    ctx = _Context(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        ctx.jobs.stop()                         # a running edit stops at its next UNet call

    app = FastAPI(title="msbd", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.ctx = ctx

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        return _error(str(err.detail), err.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, err: RequestValidationError) -> JSONResponse:
        return _error("the request is not what the page sends (a JSON object of settings expected)")

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    def info() -> dict:
        c = settings.config
        return {"model": settings.model_name, "fusions": list(FUSIONS), "toy_sizes": TOY_SIZES,
                "max_upload_mb": settings.max_upload_bytes // 2**20,
                "defaults": {"margin": c.margin, "seed": c.seed, "batch": c.first_stage.batch,
                             "repaint_steps": c.first_stage.repaint_steps, "fusion": c.grid.fusion,
                             "decoder_opt": c.decoder_opt.enabled}}

    _upload_routes(app, ctx)
    _job_routes(app, ctx)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _upload_routes(app: FastAPI, ctx: _Context) -> None:
    """The image (uploaded or a rendered toy scene), its preview, and checking an uploaded mask."""

    @app.post("/api/image")
    async def upload_image(request: Request, name: str = "image") -> JSONResponse:
        data = await ctx.body(request)
        suffix = Path(name).suffix.lower()
        staging = Staging(ctx.out)
        path = staging.path / f"source{suffix if suffix in IMAGE_SUFFIXES else ''}"
        path.write_bytes(data)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                image = load_image(path)
        except InputError as err:
            staging.drop()
            return _error(_friendly(err, (path, repr(name))))
        notes = [_scrub(str(w.message), ctx.out, repr(name)) for w in caught]
        return JSONResponse({"upload_id": ctx.new_upload(staging), "height": image.shape[0],
                             "width": image.shape[1], "notes": notes})

    @app.post("/api/toy-scene")
    def toy_scene(form: dict) -> JSONResponse:
        from msbd.toy.data import HELDOUT_SEEDS
        from msbd.toy.scenes import random_edit_task, render, render_mask
        try:
            task, size = _number(form, "task", int, 3), _number(form, "size", int, 512)
            if not 0 <= task < 10**6 or not TOY_SIZES[0] <= size <= TOY_SIZES[1]:
                raise InputError(f"toy scene: task must be in 0..999999 and size in {TOY_SIZES[0]}..{TOY_SIZES[1]}")
        except InputError as err:
            return _error(str(err))
        edit_task = random_edit_task(HELDOUT_SEEDS[task])      # the held-out tasks of make demo and the benchmark
        staging = Staging(ctx.out)
        Image.fromarray(np.asarray(render(edit_task.source, size, size))).save(staging.path / "source.png")
        (staging.path / "toy_mask.png").write_bytes(_mask_overlay(render_mask(edit_task, size, size)))
        upload_id = ctx.new_upload(staging)
        return JSONResponse({"upload_id": upload_id, "height": size, "width": size, "prompt": edit_task.prompt,
                             "mask": f"/api/uploads/{upload_id}/toy_mask.png", "notes": []})

    @app.get("/api/uploads/{upload_id}/preview.png")
    def preview(upload_id: str) -> Response:
        """The image as the model sees it (8-bit RGB, EXIF-oriented): the canvas the mask is painted on."""
        folder = ctx.upload_folder(upload_id)
        path = folder / "preview.png"
        if not path.is_file():                  # made once: a 25 MP image takes seconds to decode and encode
            partial = folder / f"preview.{_new_id()}.part"
            partial.write_bytes(_png(load_image(ctx.source_of(folder))))
            partial.replace(path)
        return FileResponse(path, media_type="image/png")

    @app.get("/api/uploads/{upload_id}/toy_mask.png")
    def toy_mask(upload_id: str) -> FileResponse:
        path = ctx.upload_folder(upload_id) / "toy_mask.png"
        if not path.is_file():
            raise HTTPException(404, "no mask for this image")
        return FileResponse(path, media_type="image/png")

    @app.post("/api/uploads/{upload_id}/mask")
    async def upload_mask(upload_id: str, request: Request, name: str = "mask") -> Response:
        """Check an uploaded mask file against the image; returns it as the brush layer (nothing is kept)."""
        folder = ctx.upload_folder(upload_id)
        data = await ctx.body(request)
        staging = Staging(ctx.out)
        path = staging.path / "mask"
        path.write_bytes(data)
        try:
            height, width = load_image(ctx.source_of(folder)).shape[:2]
            mask = load_mask(path, (height, width))
        except InputError as err:
            return _error(_friendly(err, (path, repr(name))))
        finally:
            staging.drop()
        return Response(_mask_overlay(mask), media_type="image/png")


def _job_routes(app: FastAPI, ctx: _Context) -> None:
    """Submitting an edit, its state (queue place, progress, results), cancelling, and its published files."""

    @app.post("/api/edit")
    def submit(form: dict) -> JSONResponse:
        staging = Staging(ctx.out)
        try:
            with warnings.catch_warnings(record=True) as caught:     # a truncated prompt, a transparent image
                warnings.simplefilter("always")
                job = _validated_job(form, staging, ctx)
            job.notes = [_scrub(str(w.message), ctx.out) for w in caught if issubclass(w.category, UserWarning)]
        except InputError as err:
            staging.drop()
            return _error(str(err))
        except BaseException:
            staging.drop()
            raise
        staging.keep(job.folder)
        ctx.jobs.submit(job)
        return JSONResponse({"job_id": job.id, **state(job.id)})

    @app.get("/api/jobs/{job_id}")
    def state(job_id: str) -> dict:
        job = ctx.job_of(job_id)
        ahead = ctx.jobs.ahead_of(job)
        message = job.message or (f"queued: {ahead} edit{'s' if ahead > 1 else ''} ahead of yours "
                                  f"(this server runs one edit at a time)" if ahead else "running")
        return {"state": job.state, "message": message, "ahead": ahead, "notes": job.notes,
                "progress": dataclasses.asdict(job.progress), "result": job.result}

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict:
        ctx.jobs.cancel(ctx.job_of(job_id))
        return state(job_id)

    @app.get("/api/jobs/{job_id}/files/{name}")
    def job_file(job_id: str, name: str, download: bool = False) -> FileResponse:
        path = ctx.job_of(job_id).files.get(name)           # only what the edit published: no path from the page
        if path is None or not path.is_file():
            raise HTTPException(404, "no such file for this edit")
        filename = f"msbd_{job_id[:8]}.png" if name == "output.png" else name
        return FileResponse(path, media_type="image/png", filename=filename if download else None,
                            content_disposition_type="attachment" if download else "inline")


def _validated_job(form: dict, staging: Staging, ctx: _Context) -> EditJob:
    """An EditJob from the page's JSON, checked as the command line checks an edit (prepare_edit)."""
    if not isinstance(form.get("upload_id"), str):
        raise InputError("upload an image (or render a toy scene) first")
    try:
        folder = ctx.upload_folder(form["upload_id"])
    except HTTPException as err:
        raise InputError(str(err.detail)) from None
    source, settings = ctx.source_of(folder), ctx.settings
    try:
        mask_png = base64.b64decode(str(form.get("mask_png", "")).split(",")[-1], validate=True)
    except (binascii.Error, ValueError):
        raise InputError("the mask could not be read from the page: paint it again") from None
    mask_path = staging.path / "mask.png"
    mask_path.write_bytes(mask_png)
    config = edit_config(settings.config, form)
    job_id = _new_id()
    final = ctx.out / "jobs" / job_id
    try:
        prompt, _, _, plan = prepare_edit(source, mask_path, str(form.get("prompt", "")),
                                          staging.path / "output.png", config, settings.bundle)
    except InputError as err:
        if str(err).startswith(f"mask {mask_path} is empty"):
            raise InputError("the mask is empty: paint over the region to edit (or upload a mask)") from None
        raise InputError(_friendly(err, (mask_path, "(painted)"), (source, "(uploaded)"))) from None
    return EditJob(job_id, final, source, final / "mask.png", prompt, config, plan)
