"""The HTTP app in-process (no server, no HTTP client): per-model tasks, health, upload limits, store outages,
and the model files checked before any worker starts."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from test_serve_support import multipart

from kinema.config import preset
from kinema.serve.catalog import ModelSpec, check_model_files
from kinema.serve.config import ServeConfig
from kinema.serve.store import JobStore


# -- per-model tasks and health, through the HTTP app in-process ---------------------------------------------------

def call(app, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict]:
    """(status, JSON) of one request to an ASGI ``app``, from this machine (no network, no HTTP client needed)."""
    import asyncio
    import json
    import urllib.parse
    path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": urllib.parse.unquote(path), "raw_path": path.encode(),
             "query_string": query.encode(),
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
             "headers": [(b"host", b"127.0.0.1:8000"), *((k.lower().encode(), v.encode())
                                                         for k, v in (headers or {}).items())]}
    incoming, sent = [{"type": "http.request", "body": body, "more_body": False}], []

    async def receive():
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


def png_bytes(width: int = 48, height: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def two_models_app(tmp_path):
    """The API over a tiny text-to-video model and a Wan 2.1 image-to-video one (configs only: nothing runs)."""
    from kinema.serve.api import create_app
    i2v = preset("wan2.1-i2v-14b-480p")
    catalog = {"tiny": ModelSpec(name="tiny", path="/nowhere", cfg=preset("tiny"), sizes=("64x64",), seconds=("1",)),
               "wan-i2v": ModelSpec(name="wan-i2v", path="/nowhere", cfg=i2v, sizes=("32x32",), seconds=("1",))}
    cfg = ServeConfig(data_dir=str(tmp_path), auth=False)
    store = JobStore(cfg.db_url)
    return create_app(cfg, store=store, catalog=catalog), store


def test_a_wan_i2v_model_is_offered_for_image_to_video_only(two_models_app):
    app, store = two_models_app
    status, models = call(app, "GET", "/v1/models")
    tasks = {m["id"]: m["tasks"] for m in models["data"]}
    assert status == 200 and tasks["wan-i2v"] == ["image_to_video"]
    assert {"text_to_video", "remix", "image_to_video", "extend", "edit"} <= set(tasks["tiny"])

    status, err = call(app, "POST", "/v1/videos", *multipart({"prompt": "a fox", "model": "wan-i2v"}))
    assert status == 400 and err["error"]["param"] == "input_reference" and err["error"]["code"] == "unsupported"
    assert "model 'wan-i2v' is a Wan 2.1 image-to-video model: it makes video from an image, so text-to-video " \
           "(POST /v1/videos without input_reference) is not available with it; it accepts: image-to-video" \
           in err["error"]["message"]
    assert call(app, "POST", "/v1/videos", *multipart({"prompt": "a fox", "model": "tiny"}))[0] == 200

    status, video = call(app, "POST", "/v1/videos", *multipart(
        {"prompt": "a fox", "model": "wan-i2v"}, {"input_reference": ("first.png", png_bytes(), "image/png")}))
    assert status == 200 and (video["status"], video["model"], video["size"]) == ("queued", "wan-i2v", "32x32")
    job = store.get(video["id"], "local")
    assert job.params["input"] == "image"
    claimed = store.claim("w", models=("wan-i2v",))
    assert claimed.id == job.id and store.finish(claimed)

    # what the model does not do is refused naming it, before an upload is decoded or a job is queued
    for path, fields, files, param in (
            (f"/v1/videos/{job.id}/remix", {"prompt": "a wolf"}, {}, "video_id"),
            ("/v1/videos/extensions", {"prompt": "on", "seconds": "1", "video[id]": job.id}, {}, "video[id]"),
            ("/v1/videos/edits", {"prompt": "a wolf", "video[id]": job.id}, {}, "video[id]"),
            ("/v1/videos/extensions", {"prompt": "on", "seconds": "1", "model": "wan-i2v"},
             {"video": ("clip.mp4", b"not a video", "video/mp4")}, "model"),
            ("/v1/videos/edits", {"prompt": "a wolf", "model": "wan-i2v"},
             {"video": ("clip.mp4", b"not a video", "video/mp4")}, "model")):
        status, err = call(app, "POST", path, *multipart(fields, files))
        assert status == 400 and (err["error"]["code"], err["error"]["param"]) == ("unsupported", param), (path, err)
        assert "model 'wan-i2v' is a Wan 2.1 image-to-video model" in err["error"]["message"], path
        assert "it accepts: image-to-video (POST /v1/videos with an input_reference image)" in err["error"]["message"]
    assert store.counts() == {"queued": 1, "completed": 1}  # the tiny model's job and the finished image-to-video


def test_healthz_says_when_no_worker_is_running(two_models_app, tmp_path):
    from kinema.serve.api import create_app
    _, store = two_models_app

    class Workers:  # a Supervisor's view of its workers
        state = {"configured": 1, "running": 1, "stopped": []}

        def health(self):
            return self.state

    workers = Workers()
    app = create_app(ServeConfig(data_dir=str(tmp_path), auth=False), store=store, catalog={"tiny": ModelSpec(
        name="tiny", path="/nowhere", cfg=preset("tiny"), sizes=("64x64",), seconds=("1",))}, workers=workers)
    status, health = call(app, "GET", "/healthz")
    assert status == 200 and health["status"] == "ok" and health["workers"]["running"] == 1
    workers.state = {"configured": 2, "running": 1, "stopped": [{"worker": 1, "reason": "its model cannot be loaded"}]}
    assert call(app, "GET", "/healthz")[1]["status"] == "degraded"
    workers.state = {"configured": 1, "running": 0, "stopped": [{"worker": 0, "reason": "its model cannot be loaded"}]}
    status, health = call(app, "GET", "/healthz")
    assert status == 503 and health["status"] == "no_workers"
    assert "no worker is running on this server (worker 0: its model cannot be loaded)" in health["message"]
    assert call(two_models_app[0], "GET", "/healthz") == (200, {"status": "ok", "auth": False})  # `serve api`


def test_an_upload_longer_than_an_edit_takes_is_refused_and_an_extension_takes_its_end(tmp_path):
    from test_serve_support import multipart

    from kinema.common.video_write import write_video
    from kinema.serve.api import create_app
    catalog = {"tiny": ModelSpec(name="tiny", path="/nowhere", cfg=preset("tiny"), sizes=("64x64",), seconds=("1",))}
    cfg = ServeConfig(data_dir=str(tmp_path / "data"), auth=False, max_input_frames=9)
    app = create_app(cfg, store=JobStore(cfg.db_url), catalog=catalog)
    write_video(tmp_path / "long.mp4", np.zeros((20, 64, 64, 3), np.uint8), 8)
    upload = {"video": ("long.mp4", (tmp_path / "long.mp4").read_bytes(), "video/mp4")}
    body, headers = multipart({"prompt": "x"}, upload)
    status, reply = call(app, "POST", "/v1/videos/edits", body, headers)
    assert status == 400 and reply["error"]["code"] == "video_too_long" and "9 frames" in reply["error"]["message"]
    body, headers = multipart({"prompt": "x", "seconds": "1"}, upload)
    status, reply = call(app, "POST", "/v1/videos/extensions", body, headers)
    assert status == 200 and reply["seconds"] == "2.125"  # its last 9 frames (1.125 s) and the new second


def test_a_job_store_outage_answers_503_with_retry_after(two_models_app, monkeypatch):
    import sqlite3
    app, store = two_models_app
    assert call(app, "GET", "/v1/videos?after=%00")[0] == 400  # a cursor that is no id never reaches the store

    def down(*a, **k):
        raise sqlite3.OperationalError("unable to open database file")
    monkeypatch.setattr(store, "page", down)
    monkeypatch.setattr(store.db, "execute", down)
    status, reply = call(app, "GET", "/v1/videos")
    assert status == 503 and reply["error"]["code"] == "store_unavailable"
    status, health = call(app, "GET", "/healthz")
    assert status == 503 and health["status"] == "store_unavailable"  # a load balancer takes the node out


def test_model_files_are_checked_where_cheap(tiny_model_dir, tmp_path):
    """A cut-off weights file (a download that stopped) is found from its header alone, and a Wan 2.1 I2V config
    without its CLIP image encoder beside it."""
    import shutil

    from kinema.weights import WeightsError
    spec = ModelSpec(name="tiny", path=str(tiny_model_dir), cfg=preset("tiny"), sizes=("64x64",), seconds=("1",))
    check_model_files(spec)
    cut = tmp_path / "cut"
    shutil.copytree(tiny_model_dir, cut)
    data = (cut / "transformer.safetensors").read_bytes()
    (cut / "transformer.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(WeightsError, match=rf"model 'cut': {cut}/transformer.safetensors is truncated \("
                                           rf"{len(data) // 2} of the {len(data)} bytes its header lists\)"):
        check_model_files(ModelSpec(name="cut", path=str(cut), cfg=spec.cfg, sizes=spec.sizes, seconds=spec.seconds))
    (cut / "transformer.safetensors").write_bytes(b"<html>not found</html>")
    with pytest.raises(WeightsError, match="is not a safetensors file"):
        check_model_files(ModelSpec(name="cut", path=str(cut), cfg=spec.cfg, sizes=spec.sizes, seconds=spec.seconds))
    i2v = ModelSpec(name="i2v", path=str(tmp_path / "i2v"), cfg=preset("wan2.1-i2v-14b-480p"), sizes=("32x32",),
                    seconds=("1",))
    (tmp_path / "i2v" / "image_processor").mkdir(parents=True)
    with pytest.raises(WeightsError, match="Wan 2.1 image-to-video model but .* has no CLIP image encoder"):
        check_model_files(i2v)
