"""`kinema serve` end to end, against SQLite and a real PostgreSQL server: real processes on 127.0.0.1.

The official ``openai`` SDK drives the acceptance test; raw HTTP drives the malformed requests. A tiny
random model keeps every job well under a second, so these tests measure the service, not the model.
"""

from __future__ import annotations

import io
import os
import re
import signal
import threading
import time

import av
import pytest
from PIL import Image
from test_serve_support import Server, add_key, multipart, need, store_url, wait_for

try:
    import openai
except ImportError:  # a skip here, a failure in CI (see need)
    openai = None
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks the Videos API deprecated

SIZES, SECONDS = "64x64,32x32,80x48", "1,2"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def server(backend, tiny_model_dir, tmp_path_factory):
    need(openai is not None, "the openai Python package (the acceptance tests use the official SDK)")
    folder = tmp_path_factory.mktemp(f"serve-{backend}")
    srv = Server(folder, tiny_model_dir, store_url(backend, folder),
                 extra=["--workers", "2", "--sizes", SIZES, "--seconds", SECONDS])
    try:
        yield srv.wait_ready()
    except BaseException:
        print(srv.logs())
        raise
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def key(server):
    return add_key(server.db, "tests", rate=1000, queue=1000)


def client(server, key, **kw):
    return openai.OpenAI(base_url=server.base + "/v1", api_key=key, max_retries=0, timeout=60, **kw)


def wait_done(server, key, video_id, timeout=90.0) -> dict:
    def done():
        status, body, _ = server.request("GET", f"/v1/videos/{video_id}", key=key)
        assert status == 200, body
        return body if body["status"] in ("completed", "failed") else None
    return wait_for(done, timeout, f"{video_id} to finish")


def check_mp4(data: bytes, width: int, height: int, frames: int) -> None:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(decoded) == frames and decoded[0].shape == (height, width, 3)


# -- the acceptance test -----------------------------------------------------------------------------------------

def test_openai_sdk_create_download_remix_list_delete(server, key, tmp_path):
    c = client(server, key)
    models = c.models.list().data
    assert [m.id for m in models] == ["tiny"]
    t0 = time.time()
    video = c.videos.create_and_poll(prompt="a red ball bounces on the floor", model="tiny", seconds="2",
                                     size="80x48", extra_body={"seed": 7, "steps": 2, "guidance_interval": "0.5,1"})
    assert video.status == "completed", video.error
    status, shown, _ = server.request("GET", f"/v1/videos/{video.id}", key=key)
    assert status == 200 and shown["kinema"]["settings"]["guidance_interval"] == [0.5, 1.0]
    assert (video.progress, video.model, video.seconds, video.size, video.object) == (100, "tiny", "2", "80x48", "video")
    assert t0 - 1 <= video.created_at <= video.completed_at < video.expires_at
    assert video.error is None and video.remixed_from_video_id is None

    mp4 = c.videos.download_content(video.id)  # variant defaults to the video
    check_mp4(mp4.content, 80, 48, 17)  # 2 s at 8 fps -> 17 frames (4k+1)
    thumb = Image.open(io.BytesIO(c.videos.download_content(video.id, variant="thumbnail").content))
    assert thumb.format == "JPEG" and thumb.size == (80, 48)
    sheet = Image.open(io.BytesIO(c.videos.download_content(video.id, variant="spritesheet").content))
    assert sheet.format == "JPEG" and sheet.size == (4 * 80, 4 * 48)  # 16 of the 17 frames in a 4x4 grid
    raw = c.videos.with_raw_response.retrieve(video.id)
    assert int(raw.headers["openai-poll-after-ms"]) == 100

    remix = c.videos.remix(video.id, prompt="a blue ball bounces on the floor",
                           extra_body={"guidance_interval": [0.25, 1]})  # a list, as the video object shows it
    assert remix.remixed_from_video_id == video.id and remix.status in ("queued", "in_progress", "completed")
    assert server.request("GET", f"/v1/videos/{remix.id}", key=key)[1]["kinema"]["settings"]["guidance_interval"] == \
        [0.25, 1.0]
    remix = c.videos.poll(remix.id)
    assert remix.status == "completed", remix.error
    assert (remix.size, remix.seconds, remix.prompt) == ("80x48", "2", "a blue ball bounces on the floor")
    check_mp4(c.videos.download_content(remix.id).content, 80, 48, 17)

    more = [c.videos.create(prompt=f"clip {i}", size="32x32", seconds="1", extra_body={"steps": 1}).id
            for i in range(3)]
    first = c.videos.list(limit=2)
    assert len(first.data) == 2 and first.has_more and first.data[0].id == more[-1]  # newest first
    mine = {video.id, remix.id, *more}
    listed = [v.id for v in c.videos.list(limit=2)]  # the SDK follows the cursor across pages
    assert mine <= set(listed) and len(listed) == len(set(listed))
    oldest_first = [v.id for v in c.videos.list(limit=100, order="asc")]
    assert oldest_first.index(video.id) < oldest_first.index(remix.id) < oldest_first.index(more[0])

    deleted = c.videos.delete(video.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (video.id, True, "video.deleted")
    with pytest.raises(openai.NotFoundError):
        c.videos.retrieve(video.id)
    with pytest.raises(openai.NotFoundError):
        c.videos.download_content(video.id)
    assert video.id not in [v.id for v in c.videos.list(limit=100)]
    assert not (server.data / "videos" / video.id).exists()
    for vid in more:
        assert wait_done(server, key, vid)["status"] == "completed"


def test_image_to_video_extend_and_edit(server, key):
    c = client(server, key)
    buf = io.BytesIO()
    Image.new("RGB", (120, 90), (220, 40, 40)).save(buf, "PNG")
    i2v = c.videos.create_and_poll(prompt="a red ball", size="64x64", seconds="1",
                                   input_reference=("ball.png", buf.getvalue(), "image/png"), extra_body={"steps": 2})
    assert i2v.status == "completed", i2v.error
    clip = c.videos.download_content(i2v.id).content
    check_mp4(clip, 64, 64, 9)

    longer = c.videos.poll(c.videos.extend(video=("clip.mp4", clip, "video/mp4"), prompt="it rolls on",
                                           seconds="1", extra_body={"steps": 2}).id)
    assert longer.status == "completed", longer.error
    assert float(longer.seconds) > 1.5  # the stitched total: the clip and the new second

    made = []
    for motion in ({}, {"motion_strength": "1"}):  # the default start (the clip's motion carried on) and pure noise
        body, headers = multipart({"prompt": "it rolls on", "seconds": "1", "video[id]": i2v.id, "steps": "2",
                                   "seed": "5", **motion})
        status, ext, _ = server.request("POST", "/v1/videos/extensions", body, headers, key=key)
        assert status == 200, ext
        assert wait_done(server, key, ext["id"])["status"] == "completed"
        made.append(c.videos.download_content(ext["id"]).content)
    assert made[0] != made[1]  # same seed and source: only the start differs

    edited = c.videos.poll(c.videos.edit(video=("clip.mp4", clip, "video/mp4"), prompt="a green ball").id)
    assert edited.status == "completed", edited.error
    check_mp4(c.videos.download_content(edited.id).content, 64, 64, 9)

    # no size asked: an upload is made at the offered size nearest its aspect ratio (80x48 for 5:3 and 16:9)
    buf = io.BytesIO()
    Image.new("RGB", (160, 90), (40, 40, 220)).save(buf, "PNG")
    wide = c.videos.create_and_poll(prompt="a blue box", seconds="1", extra_body={"steps": 1},
                                    input_reference=("box.png", buf.getvalue(), "image/png"))
    assert wide.status == "completed" and wide.size == "80x48", wide
    wide_clip = c.videos.download_content(wide.id).content
    check_mp4(wide_clip, 80, 48, 9)
    for made in (c.videos.edit(video=("wide.mp4", wide_clip, "video/mp4"), prompt="a green box"),
                 c.videos.extend(video=("wide.mp4", wide_clip, "video/mp4"), prompt="it slides", seconds="1",
                                 extra_body={"steps": 1})):
        made = c.videos.poll(made.id)
        assert made.status == "completed" and made.size == "80x48", made


# -- refusals -----------------------------------------------------------------------------------------------------

def test_malformed_requests_get_4xx_in_openai_shape(server, key):
    other = add_key(server.db, "someone-else", rate=1000, queue=1000)
    status, theirs, _ = server.request("POST", "/v1/videos", *multipart({"prompt": "not yours", "size": "32x32"}), key=other)
    assert status == 200
    status, mine, _ = server.request("POST", "/v1/videos", *multipart({"prompt": "mine", "size": "32x32"}), key=key)
    assert status == 200
    text_file = {"input_reference": ("notes.txt", b"just some text, not an image", "text/plain")}
    boundary = {"Content-Type": "multipart/form-data; boundary=XYZ"}
    cases = [  # (what, method, path, body, headers, key, status, param)
        ("bad size", "POST", "/v1/videos", *multipart({"prompt": "x", "size": "1280x720"}), key, 400, "size"),
        ("bad seconds", "POST", "/v1/videos", *multipart({"prompt": "x", "seconds": "12"}), key, 400, "seconds"),
        ("seconds not a number", "POST", "/v1/videos", *multipart({"prompt": "x", "seconds": "lots"}), key, 400,
         "seconds"),
        ("seed not a number", "POST", "/v1/videos", *multipart({"prompt": "x", "seed": "lucky"}), key, 400, "seed"),
        ("bad guidance_interval", "POST", "/v1/videos", *multipart({"prompt": "x", "guidance_interval": "0.9,0.1"}), key,
         400, "guidance_interval"),
        ("empty prompt", "POST", "/v1/videos", *multipart({"prompt": "   "}), key, 400, "prompt"),
        ("no prompt", "POST", "/v1/videos", *multipart({"size": "64x64"}), key, 400, "prompt"),
        ("100 kB prompt", "POST", "/v1/videos", *multipart({"prompt": "x" * 100_000}), key, 400, "prompt"),
        ("text file as image", "POST", "/v1/videos", *multipart({"prompt": "x"}, text_file), key, 400, "input_reference"),
        ("unknown model", "POST", "/v1/videos", *multipart({"prompt": "x", "model": "nope"}), key, 400, "model"),
        ("negative seed", "POST", "/v1/videos", *multipart({"prompt": "x", "seed": "-1"}), key, 400, "seed"),
        ("negative guidance", "POST", "/v1/videos", *multipart({"prompt": "x", "guidance": "-3"}), key, 400, "guidance"),
        ("zero shift", "POST", "/v1/videos", *multipart({"prompt": "x", "shift": "0"}), key, 400, "shift"),
        ("unknown sampler", "POST", "/v1/videos", *multipart({"prompt": "x", "sampler": "bogus"}), key, 400, "sampler"),
        ("100 kB negative prompt", "POST", "/v1/videos", *multipart({"prompt": "x", "negative_prompt": "x" * 100_000}),
         key, 400, "negative_prompt"),
        ("lone surrogate", "POST", "/v1/videos", b'{"prompt": "\\ud800x"}', {"Content-Type": "application/json"}, key,
         400, "prompt"),
        ("NUL in JSON", "POST", "/v1/videos", b'{"prompt": "a\\u0000b"}', {"Content-Type": "application/json"}, key,
         400, "prompt"),
        ("NUL in a form", "POST", "/v1/videos", *multipart({"prompt": "a\x00b"}), key, 400, "prompt"),
        ("surrogate in a field's name", "POST", "/v1/videos", b'{"prompt": "x", "\\udc80": 1}',
         {"Content-Type": "application/json"}, key, 400, None),
        ("unknown field", "POST", "/v1/videos", *multipart({"prompt": "x", "colour": "red"}), key, 400, "colour"),
        ("bad steps", "POST", "/v1/videos", *multipart({"prompt": "x", "steps": "100000"}), key, 400, "steps"),
        ("file in a text field", "POST", "/v1/videos", *multipart({}, {"prompt": ("p.txt", b"x", "text/plain")}),
         key, 400, "prompt"),
        ("broken multipart", "POST", "/v1/videos", b"--XYZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n"
         b"\r\nhello", boundary, key, 400, None),
        ("garbage multipart", "POST", "/v1/videos", b"\x00\xff" * 50, boundary, key, 400, None),
        ("no boundary", "POST", "/v1/videos", b"prompt=x", {"Content-Type": "multipart/form-data"}, key, 400, None),
        ("bad JSON", "POST", "/v1/videos", b"{\"prompt\": ", {"Content-Type": "application/json"}, key, 400, None),
        ("JSON list", "POST", "/v1/videos", b"[1, 2]", {"Content-Type": "application/json"}, key, 400, None),
        ("wrong type", "POST", "/v1/videos", b"<xml/>", {"Content-Type": "application/xml"}, key, 415, None),
        ("too large", "POST", "/v1/videos", b"x" * 100, {"Content-Type": "application/json",
                                                           "Content-Length": str(10**9)}, key, 413, None),
        ("no key", "GET", "/v1/videos", None, {}, None, 401, None),
        ("wrong key", "GET", "/v1/videos", None, {}, "kn-wrong", 401, None),
        ("unknown id", "GET", "/v1/videos/video_" + "0" * 32, None, {}, key, 404, None),
        ("malformed id", "GET", "/v1/videos/..%2F..%2Fetc%2Fpasswd", None, {}, key, 404, None),
        ("another key's video", "GET", f"/v1/videos/{theirs['id']}", None, {}, key, 404, None),
        ("another key's content", "GET", f"/v1/videos/{theirs['id']}/content", None, {}, key, 404, None),
        ("another key's delete", "DELETE", f"/v1/videos/{theirs['id']}", None, {}, key, 404, None),
        ("another key's remix", "POST", f"/v1/videos/{theirs['id']}/remix", b'{"prompt": "x"}',
         {"Content-Type": "application/json"}, key, 404, None),
        ("bad variant", "GET", f"/v1/videos/{mine['id']}/content?variant=../../x", None, {}, key, 400, "variant"),
        ("bad limit", "GET", "/v1/videos?limit=0", None, {}, key, 400, "limit"),
        ("superscript limit", "GET", "/v1/videos?limit=%C2%B2", None, {}, key, 400, "limit"),
        ("bad order", "GET", "/v1/videos?order=sideways", None, {}, key, 400, "order"),
        ("bad cursor", "GET", "/v1/videos?after=video_" + "1" * 32, None, {}, key, 400, "after"),
        ("foreign cursor", "GET", f"/v1/videos?after={theirs['id']}", None, {}, key, 400, "after"),
        ("no such route", "GET", "/v1/images", None, {}, key, 404, None),
        ("wrong method", "PUT", "/v1/videos", b"", {}, key, 405, None),
        ("extend without video", "POST", "/v1/videos/extensions", *multipart({"prompt": "x", "seconds": "1"}), key,
         400, "video"),
        ("extend with text", "POST", "/v1/videos/extensions", *multipart(
            {"prompt": "x", "seconds": "1"}, {"video": ("v.mp4", b"not a video at all", "video/mp4")}), key, 400, None),
        ("extend bad motion_strength", "POST", "/v1/videos/extensions", *multipart(
            {"prompt": "x", "seconds": "1", "video[id]": mine["id"], "motion_strength": "0"}), key, 400,
         "motion_strength"),
        ("edit unknown source", "POST", "/v1/videos/edits", *multipart({"prompt": "x", "video[id]": "video_" + "2" * 32}),
         key, 404, None),
        ("edit bad strength", "POST", "/v1/videos/edits", *multipart({"prompt": "x", "video[id]": mine["id"],
                                                                     "strength": "2"}), key, None, None),
        ("image_url not data", "POST", "/v1/videos", b'{"prompt": "x", "input_reference": {"image_url": '
         b'"http://127.0.0.1:1/x.png"}}', {"Content-Type": "application/json"}, key, 400, "input_reference[image_url]"),
    ]
    for what, method, path, body, headers, k, want, param in cases:
        status, reply, _ = server.request(method, path, body, headers, key=k)
        assert 400 <= status < 500, f"{what}: {status} {reply}"
        if want is not None:
            assert status == want, f"{what}: {status} {reply}"
        assert isinstance(reply, dict) and set(reply) == {"error"}, f"{what}: {reply}"
        err = reply["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["type"], f"{what}: {err}"
        if param is not None:
            assert err["param"] == param, f"{what}: {err}"
    status, reply, _ = server.request("GET", f"/v1/videos/{theirs['id']}", key=other)
    assert status == 200 and reply["prompt"] == "not yours"  # the refusals above touched nothing
    assert "Traceback" not in server.proc.tail(100_000)


def test_listing_what_is_accepted(server, key):
    status, reply, _ = server.request("POST", "/v1/videos", *multipart({"prompt": "x", "size": "1024x1792"}), key=key)
    assert status == 400 and "accepted: 64x64, 32x32, 80x48" in reply["error"]["message"]
    status, models, _ = server.request("GET", "/v1/models", key=key)
    assert status == 200 and models["data"][0]["sizes"] == SIZES.split(",") and models["data"][0]["seconds"] == ["1", "2"]


def test_rate_limit_answers_429(server):
    limited = add_key(server.db, "limited", rate=1, queue=10)
    c = client(server, limited)
    c.videos.create(prompt="one", size="32x32", extra_body={"steps": 1})
    with pytest.raises(openai.RateLimitError, match="1 videos per minute") as refused:
        c.videos.create(prompt="two", size="32x32", extra_body={"steps": 1})
    assert 55 <= int(refused.value.response.headers["retry-after"]) <= 60  # when the first leaves the minute's window


# -- reliability -----------------------------------------------------------------------------------------------------

def test_fifty_concurrent_clients_all_complete(server):
    key = add_key(server.db, "crowd", rate=1000, queue=1000)
    results: dict[int, object] = {}

    def one(i):
        try:
            c = client(server, key)
            results[i] = c.videos.create_and_poll(prompt=f"ball {i}", size="32x32", seconds="1",
                                                  extra_body={"steps": 1, "seed": i}, poll_interval_ms=300)
        except Exception as e:  # reported below with the client's number
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert not any(t.is_alive() for t in threads), "some clients never finished"
    errors = {i: r for i, r in results.items() if isinstance(r, Exception) or r.status != "completed"}
    assert not errors, errors
    ids = {r.id for r in results.values()}
    assert len(ids) == 50
    status, page, _ = server.request("GET", "/v1/videos?limit=100", key=key)
    assert {v["id"] for v in page["data"]} == ids and not page["has_more"]  # none lost, none duplicated
    assert all(v["kinema"]["attempts"] == 1 for v in page["data"])


def worker_pids(server: Server) -> list[int]:
    """Pids of the workers a `kinema serve` started, oldest first (from its log)."""
    return [int(m) for m in re.findall(r"worker \d+ started \(pid (\d+)\)", server.proc.tail(1_000_000))]


def test_jobs_survive_a_server_restart_and_a_killed_worker(backend, tiny_model_dir, tmp_path):
    db = store_url(backend, tmp_path)
    key = add_key(db, "restart", rate=1000, queue=1000)
    extra = ["--sizes", SIZES, "--seconds", "1,4", "--lease-seconds", "2"]
    api = Server(tmp_path, tiny_model_dir, db, role=["api"], extra=extra, name="api").wait_ready()
    try:
        slow = {"prompt": "slow", "size": "80x48", "seconds": "4", "steps": "100"}
        created = []
        for fields in [slow] + [{"prompt": f"quick {i}", "size": "32x32", "steps": "1"} for i in range(3)]:
            status, video, _ = api.request("POST", "/v1/videos", *multipart(fields), key=key)
            assert status == 200 and video["status"] == "queued"
            created.append(video["id"])
    finally:
        api.stop()  # SIGTERM with four queued jobs and no worker

    srv = Server(tmp_path, tiny_model_dir, db, extra=[*extra, "--workers", "1"], name="serve").wait_ready()
    try:
        for vid in created:
            status, video, _ = srv.request("GET", f"/v1/videos/{vid}", key=key)
            assert status == 200 and video["status"] in ("queued", "in_progress")

        def slow_mid_sampling():
            status, video, _ = srv.request("GET", f"/v1/videos/{created[0]}", key=key)
            assert video["status"] != "completed", "the slow job finished before it could be interrupted"
            return video["status"] == "in_progress" and 5 < video["progress"] < 90  # sampling: 5 .. 90
        wait_for(slow_mid_sampling, 120, "the slow job to be mid-sampling")
        (worker,) = worker_pids(srv)
        os.kill(worker, signal.SIGKILL)
        status, video, _ = srv.request("GET", f"/v1/videos/{created[0]}", key=key)
        assert video["status"] == "in_progress"  # its worker is gone; the job is not

        # `kinema serve` restarts the worker; the new one requeues what the old one left running.
        done = [wait_done(srv, key, vid, timeout=150) for vid in created]
        assert [v["status"] for v in done] == ["completed"] * 4, [v["error"] for v in done]
        assert [v["kinema"]["attempts"] for v in done] == [2, 1, 1, 1]
        status, page, _ = srv.request("GET", "/v1/videos?limit=100&order=asc", key=key)
        assert [v["id"] for v in page["data"]] == created  # nothing lost, nothing added
        status, data, headers = srv.request("GET", f"/v1/videos/{created[0]}/content", key=key)
        assert status == 200 and headers["content-type"] == "video/mp4"
        check_mp4(data, 80, 48, 33)
        log = srv.proc.tail(100_000)
        assert "exited (code -9)" in log and "requeued 1 job" in log and worker_pids(srv)[1] != worker
    except BaseException:
        print(srv.logs())
        raise
    finally:
        srv.stop()


def test_without_keys_only_this_machine_and_its_own_page_are_answered(tiny_model_dir, tmp_path):
    db = store_url("sqlite", tmp_path)
    api = Server(tmp_path, tiny_model_dir, db, role=["api"], extra=["--no-auth", "--sizes", SIZES]).wait_ready()
    try:
        form = multipart({"prompt": "a red ball", "size": "32x32"})
        own = f"http://127.0.0.1:{api.port}"
        cases = [  # (what, method, path, (body, headers) or None, extra headers, status, code)
            ("a client that is not a browser", "POST", "/v1/videos", form, {}, 200, None),
            ("the server's own page", "POST", "/v1/videos", form, {"Origin": own}, 200, None),
            ("another site's form", "POST", "/v1/videos", form, {"Origin": "http://localhost:9999"}, 403,
             "cross_site_request"),
            ("a sandboxed page", "POST", "/v1/videos", form, {"Origin": "null"}, 403, "cross_site_request"),
            ("another site, no Origin", "POST", "/v1/videos", form, {"Sec-Fetch-Site": "cross-site"}, 403,
             "cross_site_request"),
            ("DNS rebinding", "GET", "/v1/videos", None, {"Host": "attacker.example"}, 400, "invalid_host"),
            ("DNS rebinding, with a port", "DELETE", "/v1/videos/video_" + "0" * 32, None,
             {"Host": f"attacker.example:{api.port}"}, 400, "invalid_host"),
            ("IPv6 loopback", "GET", "/v1/videos", None, {"Host": f"[::1]:{api.port}"}, 200, None),
            ("localhost", "GET", "/v1/videos", None, {"Host": "localhost"}, 200, None),
        ]
        for what, method, path, body, headers, want, code in cases:
            body, headers = (None, headers) if body is None else (body[0], {**body[1], **headers})
            status, reply, _ = api.request(method, path, body, headers)
            assert status == want, f"{what}: {status} {reply}"
            if code is not None:
                assert reply["error"]["code"] == code, f"{what}: {reply}"
        status, page, _ = api.request("GET", "/v1/videos")
        assert [v["prompt"] for v in page["data"]] == ["a red ball"] * 2  # only the two allowed ones were queued
    except BaseException:
        print(api.logs())
        raise
    finally:
        api.stop()
