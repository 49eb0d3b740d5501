"""Prompt extension against a local OpenAI-style server: rewriting, metadata, and every way it can fail."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kinema.infer.prompt import SYSTEM_PROMPT, ExtendedPrompt, PromptExtender, extend_prompt

REWRITE = "A glossy red rubber ball bounces across a sunlit wooden floor, the camera tracking it at knee height."


class ChatServer:
    """A /v1/chat/completions server on 127.0.0.1 whose behaviour the test sets: answer, stall, fail or babble."""

    def __init__(self):
        self.mode, self.requests = "answer", []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((self.path, dict(self.headers), body))
                if server.mode == "stall":
                    time.sleep(1.0)
                if server.mode == "error":
                    self.send_error(500, "model crashed")
                    return
                if server.mode == "not-http":
                    self.wfile.write(b"GARBAGE NOT HTTP\r\n\r\n")
                    return
                if server.mode in ("cut-short", "trickle"):
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    for _ in range(11 if server.mode == "cut-short" else 40):  # then the connection closes
                        self.wfile.write(b"{")
                        self.wfile.flush()
                        time.sleep(0 if server.mode == "cut-short" else 0.05)
                    return
                content = {"answer": f'"{REWRITE}"', "think": f"<think>the user wants detail</think>\n{REWRITE}",
                           "stall": REWRITE, "empty": "  "}.get(server.mode)
                payload = (b"not json" if server.mode == "garbage" else
                           json.dumps({"choices": []} if content is None else
                                      {"choices": [{"message": {"role": "assistant", "content": content}}]}).encode())
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ChatServer()
    yield s
    s.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the with-block ends: connections are refused


def test_prompt_is_rewritten_and_the_request_is_openai_shaped(server, monkeypatch):
    monkeypatch.setenv("KINEMA_TEST_KEY", "sk-test")
    result = extend_prompt("a red ball bounces", PromptExtender(server.url, model="qwen", api_key_env="KINEMA_TEST_KEY"))
    assert result == ExtendedPrompt(REWRITE, "a red ball bounces", True,
                                    f"extended by qwen at {server.url}/v1/chat/completions")
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "qwen"
    assert body["messages"] == [{"role": "system", "content": SYSTEM_PROMPT},
                                {"role": "user", "content": "a red ball bounces"}]
    assert result.metadata() == {"original_prompt": "a red ball bounces", "prompt_extension": result.note}


@pytest.mark.parametrize("url,route", [("/v1", "/v1/chat/completions"), ("/v1/chat/completions", "/v1/chat/completions"),
                                       ("/api/", "/api/v1/chat/completions")])
def test_endpoint_forms(server, url, route):
    extend_prompt("a cat", PromptExtender(server.url + url))
    assert server.requests[0][0] == route


def test_reasoning_is_dropped(server):
    server.mode = "think"
    assert extend_prompt("a ball", PromptExtender(server.url)).prompt == REWRITE


@pytest.mark.parametrize("mode,why", [("error", "HTTP 500"), ("garbage", "did not answer JSON"),
                                      ("missing", "without choices"), ("empty", "empty prompt"),
                                      ("not-http", "broken HTTP (BadStatusLine"),
                                      ("cut-short", "broken HTTP (IncompleteRead")])
def test_bad_answers_keep_the_original_prompt(server, mode, why):
    server.mode = mode
    result = extend_prompt("a ball", PromptExtender(server.url))
    assert result.prompt == result.original == "a ball" and not result.extended
    assert why in result.note and "using the original prompt" in result.note


def test_timeout_keeps_the_original_prompt_quickly(server):
    server.mode = "stall"
    start = time.perf_counter()
    result = extend_prompt("a ball", PromptExtender(server.url, timeout=0.2))
    assert time.perf_counter() - start < 0.9
    assert not result.extended and result.prompt == "a ball" and "unreachable" in result.note


def test_a_trickled_answer_is_cut_off_at_the_timeout(server):
    server.mode = "trickle"  # a byte every 50 ms: no single read waits 0.5 s, the whole answer takes 2 s
    start = time.perf_counter()
    result = extend_prompt("a ball", PromptExtender(server.url, timeout=0.5))
    assert time.perf_counter() - start < 1.5
    assert not result.extended and "no whole answer within 0.5 s" in result.note


def test_refused_connection_keeps_the_original_prompt():
    url = f"http://127.0.0.1:{_closed_port()}"
    result = extend_prompt("a ball", PromptExtender(url, timeout=2))
    assert not result.extended and result.prompt == "a ball"
    assert "unreachable" in result.note and url in result.note


def test_missing_key_variable_is_named_and_nothing_is_sent(server, monkeypatch):
    monkeypatch.delenv("KINEMA_MISSING_KEY", raising=False)
    result = extend_prompt("a ball", PromptExtender(server.url, api_key_env="KINEMA_MISSING_KEY"))
    assert not result.extended and "KINEMA_MISSING_KEY" in result.note and server.requests == []


@pytest.mark.parametrize("kwargs,match", [(dict(url="localhost:8000"), "http:// or https://"),
                                          (dict(url="http://x", timeout=0), "timeout"),
                                          (dict(url="http://x", api_key_env=""), "environment variable")])
def test_bad_configuration_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PromptExtender(**kwargs)


def test_cli_stores_the_rewritten_and_the_original_prompt(server, tiny_model_dir, tmp_path, capsys):
    from kinema.cli import main
    from kinema.common.video import read_video_metadata
    out = tmp_path / "ball.mp4"
    assert main(["generate", "a red ball", "--model", str(tiny_model_dir), "--steps", "2", "-o", str(out),
                 "--prompt-extend", server.url, "--prompt-extend-model", "qwen"]) == 0
    meta = read_video_metadata(out)
    assert meta["prompt"] == REWRITE and meta["original_prompt"] == "a red ball"
    assert meta["prompt_extension"].startswith("extended by qwen")
    assert "prompt extended" in capsys.readouterr().err


def test_cli_goes_on_with_the_original_prompt_when_the_endpoint_is_down(tiny_model_dir, tmp_path, capsys):
    from kinema.cli import main
    from kinema.common.video import read_video_metadata
    out = tmp_path / "ball.mp4"
    assert main(["generate", "a red ball", "--model", str(tiny_model_dir), "--steps", "2", "-o", str(out),
                 "--prompt-extend", f"http://127.0.0.1:{_closed_port()}", "-q"]) == 0
    meta = read_video_metadata(out)
    assert meta["prompt"] == "a red ball" and "unreachable" in meta["prompt_extension"]
    assert "using the original prompt" in capsys.readouterr().err  # said even with -q


def test_cli_checks_the_request_before_asking_the_endpoint(server, tiny_model_dir, tmp_path, capsys):
    from kinema.cli import main
    for flags, said in ((["--frames", "10"], "frames 10 is not 4k+1"), (["-o", str(tmp_path / "x.mov")], "accepted")):
        assert main(["generate", "a red ball", "--model", str(tiny_model_dir), "--prompt-extend", server.url,
                     *flags]) == 2
        assert said in capsys.readouterr().err
    assert server.requests == []  # refused before the round trip (and before paying for one)
