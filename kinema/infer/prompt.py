"""Prompt extension (Sora's prompt upsampling): a chat model rewrites a short prompt into a detailed one.

The model is whatever the user points at: any server speaking OpenAI's ``POST /v1/chat/completions``
(a local llama.cpp / vLLM / Ollama server, or a hosted API). Nothing is sent anywhere unless asked.
Extension is best effort: an unreachable endpoint, a timeout or an odd answer leaves the original
prompt in place, and the result says why, so generation always goes on.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

# Written for Wan-style video models, which follow long, concrete, present-tense descriptions best.
SYSTEM_PROMPT = (
    "You rewrite short prompts for a text-to-video model into one detailed paragraph of 60-120 words. Describe, "
    "in concrete present-tense language: the subject and its appearance, the action and how it moves, the setting, "
    "lighting, colours, camera angle and camera motion, and the visual style. Keep every element of the original "
    "prompt and add nothing that contradicts it. Write in the language of the original prompt. Reply with the "
    "rewritten prompt only: no preamble, no quotes, no lists."
)


@dataclass(frozen=True)
class PromptExtender:
    """Where and how to ask: endpoint URL, model name, the env var holding an API key (optional), timeout."""

    url: str
    model: str = "default"
    api_key_env: str | None = None
    timeout: float = 30.0
    max_words: int = 300  # longer answers are truncated: umT5 reads 512 tokens

    def __post_init__(self):
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"prompt extension URL must start with http:// or https://, got {self.url!r}")
        if not self.timeout > 0:
            raise ValueError(f"prompt extension timeout must be > 0 seconds, got {self.timeout}")
        if self.api_key_env is not None and not self.api_key_env:
            raise ValueError("prompt extension api_key_env must be an environment variable name, got ''")

    @property
    def endpoint(self) -> str:
        """The chat-completions URL: ``url`` as given if it names the route, else ``url`` + ``/v1/chat/completions``."""
        url = self.url.rstrip("/")
        if url.endswith("/chat/completions"):
            return url
        return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


@dataclass(frozen=True)
class ExtendedPrompt:
    """The prompt to use, the user's original, and what happened (``note`` says why when nothing changed)."""

    prompt: str
    original: str
    extended: bool
    note: str

    def metadata(self) -> dict[str, str]:
        """Keys for the output's metadata: the original prompt and how the used one came about."""
        return {"original_prompt": self.original, "prompt_extension": self.note}


def extend_prompt(prompt: str, extender: PromptExtender) -> ExtendedPrompt:
    """``prompt`` rewritten by the chat model at ``extender``; on any failure the original, with the reason."""

    def keep(reason: str) -> ExtendedPrompt:
        return ExtendedPrompt(prompt, prompt, False, f"not extended: {reason}; using the original prompt")

    body = json.dumps({"model": extender.model, "temperature": 0.7,
                       "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                    {"role": "user", "content": prompt}]}).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if extender.api_key_env:
        key = os.environ.get(extender.api_key_env)
        if not key:
            return keep(f"environment variable {extender.api_key_env} (the API key) is not set")
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(extender.endpoint, data=body, headers=headers, method="POST")
    deadline = time.monotonic() + extender.timeout  # for the whole answer: a trickle of bytes cannot stretch it
    try:
        with urllib.request.urlopen(request, timeout=extender.timeout) as response:
            chunks = []
            while chunk := response.read1(65536):
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no whole answer within {extender.timeout:g} s")
            if response.length:  # the connection closed before the Content-Length it announced
                raise http.client.IncompleteRead(b"".join(chunks), response.length)
            answer = json.loads(b"".join(chunks).decode("utf-8"))
    except urllib.error.HTTPError as e:
        return keep(f"{extender.endpoint} answered HTTP {e.code} {e.reason}")
    except (urllib.error.URLError, OSError) as e:  # refused, unresolvable, timed out
        reason = getattr(e, "reason", e)
        return keep(f"{extender.endpoint} unreachable ({reason or type(e).__name__})")
    except http.client.HTTPException as e:  # not HTTP, or cut short
        return keep(f"{extender.endpoint} answered broken HTTP ({type(e).__name__}: {e})")
    except (ValueError, UnicodeDecodeError):
        return keep(f"{extender.endpoint} did not answer JSON")
    try:
        text = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return keep(f"{extender.endpoint} answered without choices[0].message.content")
    text = _clean(text if isinstance(text, str) else "", extender.max_words)
    if not text:
        return keep(f"{extender.endpoint} answered an empty prompt")
    return ExtendedPrompt(text, prompt, True, f"extended by {extender.model} at {extender.endpoint}")


def _clean(text: str, max_words: int) -> str:
    """One paragraph: reasoning blocks and wrapping quotes removed, whitespace collapsed, at most ``max_words``."""
    if "</think>" in text:  # reasoning models put their thoughts first
        text = text.rsplit("</think>", 1)[1]
    text = " ".join(text.split())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return " ".join(text.split(" ")[:max_words])
