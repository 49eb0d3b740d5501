"""ASGI middleware that guards every request: security headers on each response, and, for a server without API
keys, requests only from this machine and its own page."""

from __future__ import annotations

from .config import is_loopback
from .wire import error_response, shown


class SecurityHeaders:
    """ASGI middleware: nosniff on everything; the page may load only its own scripts and media."""

    CSP = (b"default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; style-src 'self'; "
           b"script-src 'self'; object-src 'none'; frame-ancestors 'none'")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + [
                    (b"x-content-type-options", b"nosniff"), (b"content-security-policy", self.CSP),
                    (b"referrer-policy", b"no-referrer")]
            await send(message)
        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


class LocalOnly:
    """ASGI middleware for a server without keys (``--no-auth``, loopback only). Requests must name this machine
    in their Host header (a DNS-rebinding page names its own domain), and requests that change something must not
    come from another site's page: a browser sends its Origin (and Sec-Fetch-Site) with every form and fetch."""

    SAFE = (b"GET", b"HEAD", b"OPTIONS")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                return await error_response(*refusal)(scope, receive, send)
        await self.app(scope, receive, send)

    def refusal(self, scope) -> tuple[int, str, None, str] | None:
        headers = {k.lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get(b"host", "")
        name = host[1:].partition("]")[0] if host.startswith("[") else host.rpartition(":")[0] if ":" in host else host
        if not is_loopback(name):
            return (400, f"Host {shown(host)} is not this machine: a server without API keys answers only requests "
                         f"addressed to localhost, 127.0.0.1 or [::1]", None, "invalid_host")
        if scope["method"].encode() in self.SAFE:
            return None
        origin = headers.get(b"origin")
        cross = (origin is not None and origin.partition("://")[2].lower() != host.lower()) or \
            headers.get(b"sec-fetch-site") in ("cross-site", "same-site")
        if cross:
            return (403, f"a request from another site's page ({shown(origin or 'unknown origin')}) is refused: a "
                         f"server without API keys takes changes only from its own page and from clients that are "
                         f"not browsers", None, "cross_site_request")
        return None
