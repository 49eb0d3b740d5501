"""The serve job store (SQLite and PostgreSQL), model catalog, media and config: in-process, fast."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_serve_support import store_url

from kinema.config import ConfigError, preset
from kinema.infer import InputError
from kinema.serve.catalog import ModelSpec, frames_for_seconds, parse_extras, resolve_model
from kinema.serve.config import ServeConfig, is_loopback
from kinema.serve.media import UploadError, decode_image, decode_video, job_dir, spritesheet
from kinema.serve.store import Job, JobStore, LimitError


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    return store_url(request.param, tmp_path)


def make_store(url, **kw) -> JobStore:
    return JobStore(url, **kw)


def job(owner="key_a", n=0, **kw) -> Job:
    return Job(id=f"video_{n:032x}", owner=owner, kind="create", model="tiny", prompt=f"p{n}", seconds="1", size="64x64",
               params={"settings": {"seed": n}}, **kw)


def submit(store, owner="key_a", n=0, rate=1000, queue=1000) -> Job:
    return store.submit(job(owner, n), rate, queue)


# -- the queue ----------------------------------------------------------------------------------------------------

def test_every_job_is_claimed_exactly_once_by_concurrent_workers(url):
    store = make_store(url)
    for n in range(40):
        submit(store, n=n)
    claims: list[str] = []
    lock = threading.Lock()

    def worker(name):
        while True:
            j = store.claim(name)
            if j is None:
                return
            with lock:
                claims.append(j.id)
            assert store.finish(j)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert Counter(claims) == Counter({f"video_{n:032x}": 1 for n in range(40)})
    assert store.counts() == {"completed": 40}


def test_claims_go_oldest_first_and_carry_a_fresh_token(url):
    store = make_store(url)
    for n in (5, 3, 9):
        submit(store, n=n)
    first, second = store.claim("w"), store.claim("w")
    assert [first.prompt, second.prompt] == ["p5", "p3"]  # submission order, not id order
    assert first.claim and second.claim and first.claim != second.claim
    assert first.status == "in_progress" and first.attempts == 1 and first.worker == "w"


def test_a_dead_workers_job_is_retried_then_fails_after_max_attempts(url):
    store = make_store(url, lease_s=0.2, max_attempts=2)
    submit(store)
    first = store.claim("w1")
    assert store.claim("w2") is None  # the lease is live: nobody else may take it
    time.sleep(0.3)
    second = store.claim("w2")  # w1 stopped heart-beating: the job is retried
    assert second.id == first.id and second.attempts == 2 and second.claim != first.claim
    assert not store.finish(first) and not store.heartbeat(first)  # the old claim can no longer write
    time.sleep(0.3)
    assert store.claim("w3") is None  # out of attempts
    failed = store.get(first.id, "key_a")
    assert failed.status == "failed" and failed.error_code == "worker_lost" and failed.expires_at is not None


def test_heartbeats_keep_a_slow_job_leased(url):
    store = make_store(url, lease_s=0.3)
    submit(store)
    j = store.claim("w1")
    for _ in range(4):
        time.sleep(0.15)
        assert store.heartbeat(j, progress=40)
    assert store.claim("w2") is None
    assert store.get(j.id, "key_a").progress == 40
    assert store.finish(j)
    done = store.get(j.id, "key_a")
    assert done.status == "completed" and done.progress == 100 and done.completed_at >= done.created_at


def test_a_restarted_worker_requeues_what_it_left_running(url):
    store = make_store(url, max_attempts=2)
    submit(store, n=1)
    j = store.claim("host-w0")
    assert store.recover("host-w1") == 0  # another worker's job is not touched
    assert store.recover("host-w0") == 1
    again = store.claim("host-w0")
    assert again.id == j.id and again.attempts == 2
    assert store.recover("host-w0") == 0  # out of attempts: it fails instead of looping forever
    assert store.get(j.id, "key_a").status == "failed"


def test_release_returns_a_job_without_spending_an_attempt(url):
    store = make_store(url)
    submit(store)
    j = store.claim("w")
    store.release(j)
    assert store.get(j.id, "key_a").status == "queued"
    assert store.claim("w").attempts == 1


def test_deleting_a_running_job_stops_its_worker_from_completing_it(url):
    store = make_store(url)
    submit(store)
    j = store.claim("w")
    assert store.delete(j.id, "key_b") is False  # not the owner
    assert store.delete(j.id, "key_a") is True
    assert not store.heartbeat(j) and not store.finish(j) and not store.fail(j, "x", "y")
    assert store.get(j.id, "key_a") is None and store.delete(j.id, "key_a") is False
    assert store.page("key_a") == ([], False)


def test_failures_record_code_and_message(url):
    store = make_store(url)
    submit(store)
    j = store.claim("w")
    assert store.fail(j, "generation_failed", "RuntimeError: out of memory")
    got = store.get(j.id, "key_a")
    assert (got.status, got.error_code, got.error_message) == ("failed", "generation_failed", "RuntimeError: out of memory")


# -- the API's view -------------------------------------------------------------------------------------------------

def test_pages_follow_the_cursor_and_each_owner_sees_only_their_jobs(url):
    store = make_store(url)
    for n in range(5):
        submit(store, "key_a", n)
    for n in range(5, 7):
        submit(store, "key_b", n)
    ids = [f"video_{n:032x}" for n in range(5)]
    page, more = store.page("key_a", limit=2)
    assert [j.id for j in page] == ids[::-1][:2] and more
    page, more = store.page("key_a", after=page[-1].id, limit=2)
    assert [j.id for j in page] == ids[::-1][2:4] and more
    page, more = store.page("key_a", after=page[-1].id, limit=2)
    assert [j.id for j in page] == ids[:1] and not more
    assert [j.id for j in store.page("key_a", order="asc", limit=10)[0]] == ids
    assert [j.id for j in store.page("key_a", after=ids[1], order="asc", limit=10)[0]] == ids[2:]
    with pytest.raises(KeyError):
        store.page("key_a", after="video_" + "f" * 32)
    with pytest.raises(KeyError):
        store.page("key_a", after=f"video_{5:032x}")  # key_b's job is no cursor for key_a
    assert store.get(f"video_{5:032x}", "key_a") is None and store.get(f"video_{5:032x}", "key_b") is not None


def test_rate_and_queue_limits_are_per_key(url):
    store = make_store(url)
    for n in range(3):
        submit(store, "key_a", n, rate=3)
    with pytest.raises(LimitError, match="3 videos per minute") as refused:
        submit(store, "key_a", 3, rate=3)
    assert 58 <= refused.value.retry_after <= 60  # when the first of the three leaves the minute's window
    with pytest.raises(LimitError) as refused:
        submit(store, "key_a", 3, rate=2)
    assert 58 <= refused.value.retry_after <= 60  # the second must leave too: no sooner
    submit(store, "key_b", 4, rate=3)  # another key has its own budget
    with pytest.raises(LimitError, match="queue limit reached: 3") as refused:
        submit(store, "key_a", 5, queue=3)
    assert refused.value.retry_after is None  # frees when a job finishes: no time to promise
    store.finish(store.claim("w"))  # one finishes: room in the queue again
    submit(store, "key_a", 6, queue=3)
    store.delete(f"video_{6:032x}", "key_a")  # deleting does not hand the rate budget back
    with pytest.raises(LimitError, match="per minute"):
        submit(store, "key_a", 7, rate=4)


def test_results_expire(url):
    store = make_store(url, ttl_s=0.2)
    submit(store, n=1)
    submit(store, n=2)
    assert store.finish(store.claim("w"))
    assert store.purge_expired() == []
    time.sleep(0.3)
    assert store.get(f"video_{1:032x}", "key_a") is None  # gone for clients before a sweep removes it
    assert [j.id for j in store.page("key_a")[0]] == [f"video_{2:032x}"]
    assert store.purge_expired() == [f"video_{1:032x}"]  # the queued one never expires
    assert store.get(f"video_{1:032x}", "key_a") is None and store.get(f"video_{2:032x}", "key_a") is not None


def test_keys_are_stored_hashed_and_can_be_revoked(url):
    store = make_store(url)
    key, secret = store.add_key("alice", rate_per_min=5)
    assert secret.startswith("kn-") and len(secret) > 40 and key.hash != secret and secret not in key.hash
    assert store.key_for(secret).id == key.id and store.key_for(secret).rate_per_min == 5
    assert store.key_for(secret + "x") is None
    assert store.revoke_key("alice") and not store.revoke_key("alice")
    assert store.key_for(secret) is None
    assert [k.name for k in store.keys()] == ["alice"] and store.keys()[0].revoked_at is not None


def test_connections_postgresql_dropped_are_replaced(tmp_path):
    import psycopg
    url = store_url("postgresql", tmp_path)
    store = make_store(url)
    submit(store, n=1)  # this thread now holds a connection
    others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    with psycopg.connect(url, autocommit=True) as admin:  # what a restart of the database server does to it
        admin.execute(f"SELECT pg_terminate_backend(pid) {others}")
        wait_for = time.monotonic() + 10
        while admin.execute(f"SELECT COUNT(*) {others}").fetchone()[0] and time.monotonic() < wait_for:
            time.sleep(0.02)
    submit(store, n=2)  # a transaction first: it reconnects instead of failing the request
    assert [j.id for j in store.page("key_a")[0]] == [f"video_{2:032x}", f"video_{1:032x}"]


def test_two_handles_on_one_store_see_the_same_jobs(url):
    a, b = make_store(url), make_store(url)  # e.g. the API process and a worker on another host
    submit(a)
    j = b.claim("w")
    assert j is not None and a.get(j.id, "key_a").status == "in_progress"


# -- catalog, media, config -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spec():
    cfg = preset("tiny")
    return ModelSpec(name="tiny", path="/nowhere", cfg=cfg, sizes=("64x64", "80x48"), seconds=("1", "2"))


def test_requests_outside_the_catalog_are_refused_with_what_is_accepted(spec):
    s, size, seconds = spec.settings("a ball", None, None, {}, 100)
    assert (size, seconds, s.width, s.height, s.frames) == ("64x64", "1", 64, 64, 9)
    s, size, seconds = spec.settings("a ball", "80x48", "2", {"seed": 7, "steps": 2}, 100)
    assert (s.width, s.height, s.frames, s.seed, s.steps) == (80, 48, 17, 7, 2)
    with pytest.raises(InputError, match=r"size '1280x720'.*accepted: 64x64, 80x48"):
        spec.settings("a ball", "1280x720", None, {}, 100)
    with pytest.raises(InputError, match=r"seconds '4'.*accepted: 1, 2"):
        spec.settings("a ball", None, "4", {}, 100)
    with pytest.raises(InputError, match=r"steps must be in \[1, 10\]"):
        spec.settings("a ball", None, None, {"steps": 11}, 10)
    with pytest.raises(InputError, match="sampler"):
        spec.settings("a ball", None, None, {"sampler": "ddim"}, 100)


def test_extra_fields_are_typed_and_checked():
    assert parse_extras({"seed": "3", "guidance": "4.5", "sampler": "heun", "other": "x"}) == \
        {"seed": 3, "guidance": 4.5, "sampler": "heun"}
    for bad in ({"seed": "1.5"}, {"steps": "many"}, {"guidance": "nan"}):
        with pytest.raises(InputError):
            parse_extras(bad)


def test_model_names_resolve_with_sora_aliases(spec):
    catalog = {"tiny": spec}
    assert resolve_model(catalog, None) is spec and resolve_model(catalog, "sora-2") is spec
    assert resolve_model(catalog, "sora-2-pro-2025-10-06") is spec
    with pytest.raises(InputError, match="accepted: tiny"):
        resolve_model(catalog, "gpt-video")


def test_seconds_map_to_valid_frame_counts():
    assert [frames_for_seconds(s, 8, 4) for s in (1, 2, 4)] == [9, 17, 33]
    assert frames_for_seconds(5, 16, 4) == 81


def test_uploads_must_be_real_images():
    buf = io.BytesIO()
    Image.new("RGBA", (10, 6), (255, 0, 0, 128)).save(buf, "PNG")
    img = decode_image(buf.getvalue())
    assert img.shape == (6, 10, 3) and img.dtype == np.uint8 and img[0, 0, 0] == 128  # alpha over black
    for data in (b"hello, I am text", b"GIF89a" + b"\0" * 20, b"\x89PNG\r\n\x1a\n broken"):
        with pytest.raises(UploadError, match="accepted: PNG, JPEG, WEBP"):
            decode_image(data)


def test_uploaded_videos_are_scaled_down_as_they_are_decoded(tmp_path):
    from kinema.common.video_write import write_video
    frames = np.zeros((9, 360, 640, 3), np.uint8)
    frames[:, :, 320:] = (200, 30, 30)  # right half red: the picture is scaled, not cropped
    write_video(tmp_path / "wide.mp4", frames, 8)
    data = (tmp_path / "wide.mp4").read_bytes()
    video, fps = decode_video(data, tmp_path / "scratch", max_frames=257, max_pixels=4 * 64 * 64)
    assert video.shape == (9, 96, 170, 3) and fps == 8  # 640x360 -> 16:9 within 16384 pixels, even sides
    assert video[:, :, :80, 0].mean() < 20 and video[:, :, 90:, 0].mean() > 180
    video, _ = decode_video(data, tmp_path / "scratch", max_frames=5)  # within the limit: as it is
    assert video.shape == (5, 360, 640, 3)


def test_an_extension_keeps_the_end_of_a_long_upload(tmp_path):
    from kinema.common.video_write import write_video
    ramp = np.repeat(np.arange(0, 240, 12, dtype=np.uint8)[:, None, None, None], 32, axis=1).repeat(32, 2).repeat(3, 3)
    write_video(tmp_path / "ramp.mp4", ramp, 8)  # 20 frames whose brightness rises by 12 a frame
    data = (tmp_path / "ramp.mp4").read_bytes()
    first, _ = decode_video(data, tmp_path / "scratch", max_frames=5)
    last, _ = decode_video(data, tmp_path / "scratch", max_frames=5, last=True)  # what an extension continues
    assert len(first) == len(last) == 5
    assert abs(int(first[-1].mean()) - 48) <= 3 and abs(int(last[-1].mean()) - 228) <= 3


def test_files_are_addressed_by_well_formed_ids_only(tmp_path):
    good = "video_" + "a" * 32
    assert job_dir(tmp_path, good) == tmp_path / "videos" / good
    for bad in ("../etc", "video_" + "a" * 31, "video_" + "A" * 32, good + "/..", "video_../../" + "a" * 26):
        with pytest.raises(ValueError):
            job_dir(tmp_path, bad)


def test_spritesheet_tiles_up_to_16_frames():
    frames = np.zeros((33, 48, 80, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(33)[:, None, None] * 7
    sheet = spritesheet(frames)
    assert sheet.size == (4 * 80, 4 * 48)
    assert np.asarray(sheet)[0, 0, 0] == 0 and np.asarray(sheet)[-1, -1, 0] == 32 * 7  # first and last frames
    assert spritesheet(frames[:5]).size == (3 * 80, 2 * 48)


def test_no_auth_only_on_loopback():
    assert ServeConfig(auth=False, host="127.0.0.1").auth is False
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    with pytest.raises(ConfigError, match="--no-auth is only allowed on a loopback"):
        ServeConfig(auth=False, host="0.0.0.0")


def test_store_urls_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="sqlite:/// or postgresql://"):
        JobStore(str(tmp_path / "jobs.db"))
    assert Path(ServeConfig(data_dir=str(tmp_path)).db_url[len("sqlite:///"):]).parent == tmp_path


def test_workers_claim_only_the_models_they_serve(url):
    store = make_store(url)
    store.submit(Job(id="video_" + "b" * 32, owner="o", kind="create", model="big", prompt="p", seconds="1",
                     size="64x64"), 10, 10)
    submit(store, n=1)
    assert store.claim("small-host", models=("tiny",)).model == "tiny"
    assert store.claim("small-host", models=("tiny",)) is None
    assert store.claim("big-host", models=("big", "other")).model == "big"
