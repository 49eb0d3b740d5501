"""What crosses the wire: OpenAI-shaped errors, the request body limit, reading forms, the Video object.

Every refusal is ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status, as OpenAI's
API answers and its SDK raises (``BadRequestError``, ``NotFoundError``, ...). Bodies are read as
multipart (what the SDK sends), urlencoded or JSON (handy with curl); anything else is a 415.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse

from .store import Job

MAX_FIELD_BYTES = 1 * 2**20  # any single non-file form field; prompts are checked far below this
TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
         404: "invalid_request_error", 405: "invalid_request_error", 409: "invalid_request_error",
         413: "invalid_request_error", 415: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
         503: "server_error"}


class APIError(Exception):
    """A refused request: HTTP status, a message that says what was wrong and what is accepted."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in OpenAI's shape (text a client sent that UTF-8 cannot hold, a lone surrogate, escaped)."""
    message, param = (None if v is None else v.encode("utf-8", "backslashreplace").decode() for v in (message, param))
    body = {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def shown(value: str, limit: int = 80) -> str:
    """A client-sent value quoted for an error message, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


# -- request size --------------------------------------------------------------------------------------------

class BodyTooLarge(Exception):
    """The request body went past the server's limit while it was being read."""


class BodyLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` (by Content-Length up front, else while reading)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            msg = f"request body is over this server's limit of {self.max_bytes} bytes"
            return await error_response(413, msg, code="request_too_large")(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(f"request body is over this server's limit of {self.max_bytes} bytes")
            return message

        return await self.app(scope, limited, send)


# -- reading requests ----------------------------------------------------------------------------------------

@dataclass
class Body:
    """A request's fields (str) and uploaded files, whatever encoding it came in."""

    fields: dict[str, str]
    files: dict[str, UploadFile]


async def read_body(request: Request, accepted: tuple[str, ...], file_fields: tuple[str, ...] = ()) -> Body:
    """The request's fields and files; 400 for unknown or repeated fields and broken bodies, 415 for other types."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: dict[str, str] = {}
    files: dict[str, UploadFile] = {}
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form(max_files=len(file_fields), max_fields=64, max_part_size=MAX_FIELD_BYTES)
        except MultiPartException as e:
            raise APIError(400, f"malformed form body: {e}", code="invalid_body") from None
        for key, value in form.multi_items():
            if key in fields or key in files:
                raise APIError(400, f"field {shown(key)} is given more than once", param=key)
            if isinstance(value, UploadFile):
                if key not in file_fields:
                    raise APIError(400, f"field {shown(key)} cannot be a file upload; files are accepted in: "
                                        f"{', '.join(file_fields) or 'none'}", param=key)
                files[key] = value
            else:
                fields[key] = value
    elif ctype == "application/json":
        try:
            data = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise APIError(400, "request body is not valid JSON", code="invalid_body") from None
        if not isinstance(data, dict):
            raise APIError(400, "request body must be a JSON object", code="invalid_body")
        fields = _flatten(data)
    elif ctype == "" and not await request.body():
        pass
    else:
        raise APIError(415, f"content type {shown(ctype)} is not accepted; send multipart/form-data, "
                            f"application/x-www-form-urlencoded or application/json", code="unsupported_media_type")
    for key, value in fields.items():
        _check_text(key, value)
    unknown = sorted(set(fields) - set(accepted) | set(files) - set(file_fields))
    if unknown:
        raise APIError(400, f"unknown parameter {shown(unknown[0])}; accepted: {', '.join(accepted)}", param=unknown[0],
                       code="unknown_parameter")
    return Body(fields, files)


def _flatten(data: dict) -> dict[str, str]:
    """JSON fields as form fields: {"video": {"id": "x"}} -> {"video[id]": "x"}; numbers as text; a list as
    comma-separated text ({"guidance_interval": [0, 0.9]}, as the video object shows it -> "0,0.9")."""
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, list):
            out[key] = ",".join(_scalar(key, v) for v in value)
        elif isinstance(value, dict):
            for sub, inner in value.items():
                out[f"{key}[{sub}]"] = _scalar(f"{key}[{sub}]", inner)
        elif value is not None:
            out[key] = _scalar(key, value)
    return out


def _check_text(key: str, value: str) -> None:
    """400 for text no store or encoder can hold: NUL characters and lone surrogates (JSON's "\\ud800")."""
    for text, param in ((key, None), (value, key)):
        if "\x00" in text:
            raise APIError(400, f"field {shown(key)} contains a NUL character", param=param)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, f"field {shown(key)} is not valid Unicode text (it has a lone surrogate)",
                           param=param) from None


def _scalar(key: str, value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise APIError(400, f"{key} must be a string or a number, got {type(value).__name__}", param=key)
    return str(value)


async def read_upload(upload: UploadFile, limit: int, param: str) -> bytes:
    """An uploaded file's bytes; 413 past ``limit``, 400 if empty."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise APIError(413, f"{param} is over this server's upload limit of {limit} bytes", param=param,
                       code="file_too_large")
    if not data:
        raise APIError(400, f"{param} is an empty file", param=param)
    return data


# -- the Video object ------------------------------------------------------------------------------------------

def video_object(job: Job) -> dict:
    """The OpenAI ``Video`` object for a job, plus a ``kinema`` block with its settings."""
    s = job.params.get("settings", {})
    return {
        "id": job.id, "object": "video", "status": job.status, "progress": int(job.progress),
        "created_at": int(job.created_at), "completed_at": _int(job.completed_at), "expires_at": _int(job.expires_at),
        "model": job.model, "prompt": job.prompt, "seconds": job.seconds, "size": job.size,
        "error": {"code": job.error_code, "message": job.error_message} if job.status == "failed" else None,
        "remixed_from_video_id": job.source_id if job.kind == "remix" else None,
        "kinema": {"kind": job.kind, "source_video_id": job.source_id, "attempts": job.attempts,
                   "settings": {k: s.get(k) for k in ("seed", "steps", "guidance", "guidance_interval", "shift",
                                                      "sampler", "negative_prompt", "frames", "fps", "width",
                                                      "height")}},
    }


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)
