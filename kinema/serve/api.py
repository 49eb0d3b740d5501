"""The HTTP API: OpenAI's Videos API (``/v1/videos`` ...) over the job store, plus the web page at ``/``.

The API never generates anything itself: it checks a request against the model catalog, stores the
inputs under the new job's id, and queues the job for the workers. Handlers run blocking store calls
in Starlette's thread pool so the event loop stays free for the many clients that poll.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import secrets
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..common.io import atomic_path
from ..common.video_write import write_video
from ..infer.pipeline import InputError
from .catalog import ModelSpec, available_tasks, load_catalog, parse_extras, resolve_model
from .config import ServeConfig
from .media import (INPUT_IMAGE, INPUT_VIDEO, VARIANTS, VIDEO_ID, UploadError, decode_image, decode_video, job_dir,
                    remove_job_files, save_image)
from .db import is_store_error, store_error_types
from .guards import LocalOnly, SecurityHeaders
from .store import Job, JobStore, LimitError
from .wire import APIError, BodyLimit, BodyTooLarge, error_response, read_body, read_upload, shown, video_object

log = logging.getLogger("kinema.serve.api")
STATIC = Path(__file__).resolve().parent / "static"
EXTRAS = ("seed", "steps", "guidance", "guidance_interval", "shift", "sampler", "negative_prompt")
CREATE_FIELDS = ("prompt", "model", "seconds", "size", "input_reference[image_url]", "input_reference[file_id]", *EXTRAS)
SOURCE_FIELDS = ("video[id]",)
DEFAULT_STRENGTH = 0.7  # edits and remixes: how much of the source is re-noised (1 = start from pure noise)


@dataclass(frozen=True)
class Owner:
    """Who is asking: a key id (or "local" without auth) and its limits."""

    id: str
    rate_per_min: int
    max_queue: int


class VideosAPI:
    """The route handlers, sharing one config, job store and model catalog."""

    def __init__(self, cfg: ServeConfig, store: JobStore, catalog: dict[str, ModelSpec], workers=None):
        self.cfg, self.store, self.catalog, self.data = cfg, store, catalog, cfg.data_path
        self.workers = workers  # this process's worker Supervisor (``kinema serve``), None for ``serve api``
        self.poll_header = {"openai-poll-after-ms": str(cfg.poll_ms)}

    # -- shared steps --------------------------------------------------------------------------------------
    async def owner(self, request: Request) -> Owner:
        if not self.cfg.auth:
            return Owner("local", self.cfg.rate_per_min, self.cfg.max_queue)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "no API key given: send 'Authorization: Bearer YOUR_KEY' (create one with "
                                "`kinema serve keys create`)", code="missing_api_key")
        key = await run_in_threadpool(self.store.key_for, token.strip())
        if key is None:
            raise APIError(401, "incorrect or revoked API key", code="invalid_api_key")
        return Owner(key.id, key.rate_per_min or self.cfg.rate_per_min, key.max_queue or self.cfg.max_queue)

    def prompt(self, fields: dict[str, str]) -> str:
        prompt = fields.get("prompt")
        if prompt is None or not prompt.strip():
            raise APIError(400, "prompt is required: describe the video, e.g. 'a red ball bounces on the floor'",
                           param="prompt", code="missing_prompt" if prompt is None else "empty_prompt")
        for name in ("prompt", "negative_prompt"):
            text = fields.get(name) or ""
            if len(text) > self.cfg.max_prompt_chars:
                raise APIError(400, f"{name} is {len(text)} characters; at most {self.cfg.max_prompt_chars} accepted",
                               param=name, code="prompt_too_long")
        return prompt

    async def job_of(self, owner: Owner, video_id: str, param: str | None = None) -> Job:
        job = await run_in_threadpool(self.store.get, video_id, owner.id) if VIDEO_ID.fullmatch(video_id) else None
        if job is None:
            raise APIError(404, f"no video found with id {shown(video_id)}", param=param, code="video_not_found")
        return job

    async def completed_source(self, owner: Owner, fields: dict[str, str], param: str = "video[id]") -> Job:
        job = await self.job_of(owner, fields[param], param)
        if job.status != "completed":
            raise APIError(409, f"video {job.id} is {job.status}; only completed videos can be used as a source",
                           param=param, code="video_not_ready")
        return job

    async def submit(self, owner: Owner, job: Job, image=None, video=None, copy_from: str | None = None) -> Response:
        """Store the job's inputs under its id, then queue it (removing the inputs if a limit refuses it)."""
        folder = job_dir(self.data, job.id)

        def save_inputs():
            folder.mkdir(parents=True, exist_ok=True)
            if image is not None:
                save_image(folder / INPUT_IMAGE, image)
            if video is not None:
                write_video(folder / INPUT_VIDEO, video[0], video[1])
            if copy_from is not None:  # a copy, so the source may be deleted or expire before this job runs
                with atomic_path(folder / INPUT_VIDEO) as tmp:
                    shutil.copyfile(job_dir(self.data, copy_from) / VARIANTS["video"][0], tmp)

        try:
            await run_in_threadpool(save_inputs)
            job = await run_in_threadpool(self.store.submit, job, owner.rate_per_min, owner.max_queue)
        except LimitError as e:
            await run_in_threadpool(remove_job_files, self.data, job.id)
            wait = e.retry_after or max(1, math.ceil(self.cfg.poll_ms / 1000))  # a queue frees as jobs finish
            raise APIError(429, str(e), code="rate_limit_exceeded", headers={"retry-after": str(wait)}) from None
        except FileNotFoundError:
            await run_in_threadpool(remove_job_files, self.data, job.id)
            raise APIError(404, "the source video's files have expired", code="video_not_found") from None
        except BaseException:
            await run_in_threadpool(remove_job_files, self.data, job.id)
            raise
        return JSONResponse(video_object(job), headers=self.poll_header)

    def need_task(self, task: str, what: str, spec: ModelSpec | None = None, param: str | None = None) -> None:
        """A 400 unless this install runs ``task`` (and ``spec``, when given, offers it: ``ModelSpec.tasks``)."""
        if task not in available_tasks():
            raise APIError(400, f"{what} is not supported by this server yet", code="unsupported")
        if spec is not None and task not in spec.tasks:
            raise APIError(400, spec.refusal(task), param=param, code="unsupported")

    # -- /v1/models ----------------------------------------------------------------------------------------
    async def models(self, request: Request) -> Response:
        await self.owner(request)
        return JSONResponse({"object": "list", "data": [spec.describe() for spec in self.catalog.values()]})

    # -- /v1/videos ----------------------------------------------------------------------------------------
    async def create(self, request: Request) -> Response:
        owner = await self.owner(request)
        body = await read_body(request, CREATE_FIELDS, file_fields=("input_reference",))
        f = body.fields
        spec = resolve_model(self.catalog, f.get("model"))
        with_image = "input_reference" in body.files or any(f"input_reference[{k}]" in f for k in ("image_url", "file_id"))
        if not with_image:  # a model that makes video from an image only (Wan 2.1 I2V) needs one
            self.need_task("text_to_video", "text-to-video", spec, param="input_reference")
        prompt = self.prompt(f)
        s, size, seconds = spec.settings(prompt, f.get("size"), f.get("seconds"), parse_extras(f), self.cfg.max_steps)
        job = Job(id=new_video_id(), owner=owner.id, kind="create", model=spec.name, prompt=prompt, seconds=seconds,
                  size=size, params={"settings": asdict(s)})
        image = None
        if with_image:
            self.need_task("image_to_video", "image-to-video (input_reference)", spec, param="input_reference")
            image = await run_in_threadpool(decode_image, await self.reference_bytes(body))
            job.params["input"] = "image"
            if not f.get("size"):  # made at the offered size nearest the image's aspect ratio
                s, job.size, _ = spec.settings(prompt, spec.size_like(image.shape[1], image.shape[0]), seconds,
                                               parse_extras(f), self.cfg.max_steps)
                job.params["settings"] = asdict(s)
        return await self.submit(owner, job, image=image)

    async def reference_bytes(self, body) -> bytes:
        if "input_reference" in body.files:
            return await read_upload(body.files["input_reference"], self.cfg.max_upload_bytes, "input_reference")
        if "input_reference[file_id]" in body.fields:
            raise APIError(400, "input_reference file_id is not supported here; upload the image as input_reference",
                           param="input_reference[file_id]")
        url = body.fields["input_reference[image_url]"]
        head, sep, payload = url.partition(",")
        if not (head.startswith("data:image/") and head.endswith(";base64") and sep):
            raise APIError(400, "input_reference image_url must be a base64 data URL (data:image/png;base64,...); "
                                "this server does not fetch URLs", param="input_reference[image_url]")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise APIError(400, "input_reference image_url is not valid base64", param="input_reference[image_url]") from None
        if len(data) > self.cfg.max_upload_bytes:
            raise APIError(413, f"input_reference is over the upload limit of {self.cfg.max_upload_bytes} bytes",
                           param="input_reference[image_url]", code="file_too_large")
        return data

    async def retrieve(self, request: Request) -> Response:
        owner = await self.owner(request)
        job = await self.job_of(owner, request.path_params["video_id"])
        return JSONResponse(video_object(job), headers=self.poll_header)

    async def list(self, request: Request) -> Response:
        owner = await self.owner(request)
        q = request.query_params
        unknown = sorted(set(q) - {"after", "limit", "order"})
        if unknown:
            raise APIError(400, f"unknown query parameter {shown(unknown[0])}; accepted: after, limit, order",
                           param=unknown[0], code="unknown_parameter")
        limit_text = q.get("limit", "20")
        if not (limit_text.isascii() and limit_text.isdigit()) or not 1 <= int(limit_text) <= 100:
            raise APIError(400, f"limit must be an integer in [1, 100], got {shown(limit_text)}", param="limit")
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise APIError(400, f"order must be 'asc' or 'desc', got {shown(order)}", param="order")
        after = q.get("after") or None
        if after is not None and not VIDEO_ID.fullmatch(after):
            raise APIError(400, f"after {shown(after)} is not a video id (video_ + 32 hex digits)", param="after")
        try:
            jobs, more = await run_in_threadpool(self.store.page, owner.id, after, int(limit_text), order)
        except KeyError:
            raise APIError(400, f"after {shown(after)} is not one of your videos", param="after") from None
        data = [video_object(j) for j in jobs]
        return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None, "has_more": more})

    async def delete(self, request: Request) -> Response:
        owner = await self.owner(request)
        video_id = request.path_params["video_id"]
        await self.job_of(owner, video_id)
        if await run_in_threadpool(self.store.delete, video_id, owner.id):
            await run_in_threadpool(remove_job_files, self.data, video_id)
        return JSONResponse({"id": video_id, "object": "video.deleted", "deleted": True})

    async def content(self, request: Request) -> Response:
        owner = await self.owner(request)
        job = await self.job_of(owner, request.path_params["video_id"])
        unknown = sorted(set(request.query_params) - {"variant"})
        if unknown:
            raise APIError(400, f"unknown query parameter {shown(unknown[0])}; accepted: variant", param=unknown[0])
        variant = request.query_params.get("variant", "video")
        if variant not in VARIANTS:
            raise APIError(400, f"variant {shown(variant)} is not one of: {', '.join(VARIANTS)}", param="variant")
        if job.status != "completed":
            raise APIError(409, f"video {job.id} is {job.status}; its content is ready when it is completed",
                           code="video_not_ready")
        name, media_type = VARIANTS[variant]
        path = job_dir(self.data, job.id) / name
        if not path.is_file():
            raise APIError(404, f"the {variant} of video {job.id} is gone (expired or deleted)", code="content_not_found")
        ext = name.rsplit(".", 1)[1]
        return FileResponse(path, media_type=media_type, filename=f"{job.id}-{variant}.{ext}",
                            content_disposition_type="inline")

    async def remix(self, request: Request) -> Response:
        owner = await self.owner(request)
        body = await read_body(request, ("prompt", *EXTRAS, "strength"))
        source = await self.completed_source(owner, {"video_id": request.path_params["video_id"]}, "video_id")
        spec = self.spec_of(source)
        self.need_task("remix", "remixing videos", spec, param="video_id")
        prompt = self.prompt(body.fields)
        settings = dict(source.params["settings"], prompt=prompt, **parse_extras(body.fields))
        edit = "edit" in spec.tasks
        params = {"settings": settings, "remix_mode": "edit" if edit else "reseed"}
        if edit:
            params["strength"] = strength(body.fields)
        self.check(spec, settings)
        job = Job(id=new_video_id(), owner=owner.id, kind="remix", model=spec.name, prompt=prompt,
                  seconds=source.seconds, size=source.size, params=params, source_id=source.id)
        return await self.submit(owner, job, copy_from=source.id if edit else None)

    async def extend(self, request: Request) -> Response:
        owner = await self.owner(request)
        body = await read_body(request, ("prompt", "seconds", "model", "size", "motion_strength", *SOURCE_FIELDS,
                                         *EXTRAS), file_fields=("video",))
        self.need_task("extend", "extending videos (/v1/videos/extensions)")
        f = body.fields
        prompt = self.prompt(f)
        if not f.get("seconds"):
            raise APIError(400, "seconds (the length of the new segment) is required", param="seconds")
        motion = unit_number(f, "motion_strength", "lower keeps more of the video's motion carried on, 1 starts "
                                                   "from pure noise")
        source, spec, video = await self.source_video(owner, body, "extend", "extending videos")
        size = source.size if source is not None else f.get("size") or spec.size_like(video[0].shape[2],
                                                                                         video[0].shape[1])
        s, size, seconds = spec.settings(prompt, size, f["seconds"], parse_extras(f), self.cfg.max_steps)
        before = float(source.seconds) if source is not None else len(video[0]) / video[1]
        job = Job(id=new_video_id(), owner=owner.id, kind="extend", model=spec.name, prompt=prompt,
                  seconds=f"{before + float(seconds):g}", size=size,
                  params={"settings": asdict(s), "extend_seconds": seconds,
                          **({} if motion is None else {"motion_strength": motion})}, source_id=source and source.id)
        return await self.submit(owner, job, video=video, copy_from=source and source.id)

    async def edit(self, request: Request) -> Response:
        owner = await self.owner(request)
        body = await read_body(request, ("prompt", "model", "size", "strength", *SOURCE_FIELDS, *EXTRAS),
                               file_fields=("video",))
        self.need_task("edit", "editing videos (/v1/videos/edits)")
        f = body.fields
        prompt = self.prompt(f)
        source, spec, video = await self.source_video(owner, body, "edit", "editing videos")
        if source is not None:  # same size and settings as the source, new prompt (and any extras given)
            settings = dict(source.params["settings"], prompt=prompt, **parse_extras(f))
            self.check(spec, settings)
            size, seconds = source.size, source.seconds
        else:  # the output keeps the upload's length; its size is the offered one nearest its aspect ratio
            size = f.get("size") or spec.size_like(video[0].shape[2], video[0].shape[1])
            s, size, _ = spec.settings(prompt, size, None, parse_extras(f), self.cfg.max_steps)
            settings, seconds = asdict(s), f"{len(video[0]) / video[1]:g}"
        job = Job(id=new_video_id(), owner=owner.id, kind="edit", model=spec.name, prompt=prompt, seconds=seconds,
                  size=size, params={"settings": settings, "strength": strength(f)}, source_id=source and source.id)
        return await self.submit(owner, job, video=video, copy_from=source and source.id)

    async def source_video(self, owner: Owner, body, task: str, what: str):
        """(source job or None, model spec, uploaded (frames, fps) or None) for extend / edit (``task``): a 400
        when the model (the source's, or the one named) does not offer it, before any upload is decoded."""
        if "video" in body.files and "video[id]" in body.fields:
            raise APIError(400, "give either a video file or video[id], not both", param="video")
        if "video[id]" in body.fields:
            source = await self.completed_source(owner, body.fields)
            spec = self.spec_of(source)
            self.need_task(task, what, spec, param="video[id]")
            return source, spec, None
        if "video" not in body.files:
            raise APIError(400, "video is required: upload a file as 'video' or name a completed video as video[id]",
                           param="video")
        spec = resolve_model(self.catalog, body.fields.get("model"))
        self.need_task(task, what, spec, param="model")
        data = await read_upload(body.files["video"], self.cfg.max_upload_bytes, "video")
        width, height, _ = spec.largest_request  # decoded at up to twice the largest size's sides, no larger
        limit = self.cfg.max_input_frames
        # an extension continues the upload's end: its last frames; an edit covers the whole upload: refused if longer
        frames, fps = await run_in_threadpool(decode_video, data, self.data / "tmp", limit + (task == "edit"),
                                              4 * width * height, task == "extend")
        if len(frames) > limit:
            raise APIError(400, f"video is longer than this server's {limit} frames an edit takes ({limit / fps:g} s "
                                f"at its {fps:g} fps); trim it", param="video", code="video_too_long")
        return None, spec, (frames, fps)

    def spec_of(self, job: Job) -> ModelSpec:
        if job.model not in self.catalog:
            raise APIError(400, f"video {job.id} was made by model {job.model!r}, which this server no longer runs; "
                                f"running: {', '.join(self.catalog)}", code="model_not_found")
        return self.catalog[job.model]

    def check(self, spec: ModelSpec, settings: dict) -> None:
        from ..infer.pipeline import Settings, check_settings
        steps = settings.get("steps")
        if isinstance(steps, int) and not 1 <= steps <= self.cfg.max_steps:
            raise InputError(f"steps must be in [1, {self.cfg.max_steps}] on this server, got {steps}", param="steps")
        try:
            check_settings(spec.cfg, Settings(**settings))
        except TypeError as e:
            raise InputError(str(e)) from None

    # -- page and health -----------------------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def health(self, request: Request) -> Response:
        """"ok" (200); under ``kinema serve``, with its workers, "degraded" while some stopped for good and
        "no_workers" (503: a load balancer's or container's check fails) when none is left to run the queue."""
        body = {"status": "ok", "auth": self.cfg.auth}
        try:  # the job store answers: without it nothing can be queued or read
            await run_in_threadpool(self.store.db.execute, "SELECT 1")
        except Exception as e:
            if not is_store_error(e):
                raise
            return JSONResponse({**body, "status": "store_unavailable",
                                 "message": "the job store (database) is unreachable"}, status_code=503)
        if self.workers is None:
            return JSONResponse(body)
        workers = self.workers.health()
        body["workers"] = workers
        if workers["configured"] and not workers["running"]:
            body["status"] = "no_workers"
            body["message"] = ("no worker is running on this server (" + "; ".join(
                f"worker {w['worker']}: {w['reason']}" for w in workers["stopped"]) + "): jobs are queued but only a "
                "worker started elsewhere on this job store will run them; the server's log says why")
            return JSONResponse(body, status_code=503)
        if workers["stopped"]:
            body["status"] = "degraded"
        return JSONResponse(body)


def strength(fields: dict[str, str]) -> float:
    """The ``strength`` field in (0, 1] (how much of the source is re-generated), default 0.7."""
    value = unit_number(fields, "strength")
    return DEFAULT_STRENGTH if value is None else value


def unit_number(fields: dict[str, str], name: str, meaning: str = "") -> float | None:
    """The field ``name`` as a number in (0, 1], None when not given; a 400 naming it otherwise."""
    raw = fields.get(name)
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise APIError(400, f"{name} must be a number in (0, 1]{f' ({meaning})' if meaning else ''}, got {shown(raw)}",
                       param=name)
    return value


def new_video_id() -> str:
    """A fresh random video id (``video_`` + 32 hex digits)."""
    return "video_" + secrets.token_hex(16)


# -- the application -----------------------------------------------------------------------------------------

async def _api_error(request: Request, exc: APIError) -> Response:
    return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)


async def _input_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, UploadError):
        return error_response(400, str(exc), param="input_reference" if "image" in str(exc) else "video",
                              code="invalid_file")
    return error_response(400, str(exc), param=getattr(exc, "param", None), code="invalid_value")


async def _http_error(request: Request, exc: HTTPException) -> Response:
    msg = {404: f"no such endpoint: {request.method} {request.url.path}",
           405: f"method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return error_response(exc.status_code, msg, code="not_found" if exc.status_code == 404 else None)


async def _too_large(request: Request, exc: BodyTooLarge) -> Response:
    return error_response(413, str(exc), code="request_too_large")


async def _store_down(request: Request, exc: Exception) -> Response:
    """503 with Retry-After while the job store is unreachable: nothing is lost, the client retries."""
    log.warning("job store unreachable on %s %s: %s", request.method, request.url.path, exc)
    return error_response(503, "the job store is unreachable; retry shortly", code="store_unavailable",
                          headers={"retry-after": "5"})


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "the server failed to handle this request; it has been logged", code="server_error")


def _closing(handler):
    """The handler, then close the request's uploaded files (spooled temporary files) whatever happened."""
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        finally:
            await request.close()
    return endpoint


def create_app(cfg: ServeConfig, store: JobStore | None = None, catalog: dict[str, ModelSpec] | None = None,
               workers=None) -> Starlette:
    """The Starlette application for a deployment (``workers``: the Supervisor of this process's workers, whose
    state ``/healthz`` reports; anything with its ``health()``)."""
    store = store or JobStore(cfg.db_url, lease_s=cfg.lease_s, max_attempts=cfg.max_attempts, ttl_s=cfg.ttl_s)
    api = VideosAPI(cfg, store, catalog or load_catalog(cfg.models, cfg.sizes, cfg.seconds), workers)
    routes = [
        Route("/", api.page, methods=["GET"]),
        Route("/healthz", api.health, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/videos", _closing(api.create), methods=["POST"]),
        Route("/v1/videos", api.list, methods=["GET"]),
        Route("/v1/videos/extensions", _closing(api.extend), methods=["POST"]),
        Route("/v1/videos/edits", _closing(api.edit), methods=["POST"]),
        Route("/v1/videos/{video_id}", api.retrieve, methods=["GET"]),
        Route("/v1/videos/{video_id}", api.delete, methods=["DELETE"]),
        Route("/v1/videos/{video_id}/content", api.content, methods=["GET"]),
        Route("/v1/videos/{video_id}/remix", _closing(api.remix), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {APIError: _api_error, InputError: _input_error, UploadError: _input_error, HTTPException: _http_error,
                BodyTooLarge: _too_large, Exception: _server_error,
                **{kind: _store_down for kind in store_error_types()}}
    middleware = [Middleware(SecurityHeaders), *([] if cfg.auth else [Middleware(LocalOnly)]),
                  Middleware(BodyLimit, max_bytes=cfg.max_request_bytes)]
    return Starlette(routes=routes, exception_handlers=handlers, middleware=middleware)
