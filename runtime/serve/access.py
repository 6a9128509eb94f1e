"""Who may call the server, and with what: the API key (``Authorization: Bearer``) and the body's content type.

Both are decided from the request's headers alone, before its body is read. A content type is required because a
browser sends ``text/plain``, ``application/x-www-form-urlencoded`` and ``multipart/form-data`` cross-site without
asking the server first (a CORS "simple" request): a JSON endpoint that took ``text/plain`` could be driven by any
web page its user opens. ``multipart/form-data`` is taken only where documented (image uploads); a page could send
one there, which is what ``--api-key`` is for.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
"""Paths answered without the API key: probes of orchestrators, which say nothing about the model or its inputs."""

JSON = "application/json"
MULTIPART = "multipart/form-data"


@dataclass(frozen=True)
class Refusal:
    """An answer given instead of calling the endpoint: status, message, extra headers."""

    status: int
    detail: str
    headers: tuple[tuple[bytes, bytes], ...] = ()


def check_api_key(key: str) -> str:
    """``key`` if it can travel in an ``Authorization: Bearer`` header (visible ASCII, no spaces), else ValueError."""
    if not key or not key.isascii() or not key.isprintable() or " " in key:
        raise ValueError("api_key must be non-empty visible ASCII without spaces (it is sent as 'Authorization: "
                         "Bearer KEY')")
    return key


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _media_type(content_type: bytes | None) -> str:
    """``"application/json"`` of ``b"Application/JSON; charset=utf-8"``; "" when there is none."""
    if content_type is None:
        return ""
    return content_type.decode("latin-1").split(";", 1)[0].strip().lower()


class RequestGate:
    """Refuses, from the headers of an HTTP request, what must not reach an endpoint.

    api_key: when set, every path but ``OPEN_PATHS`` needs ``Authorization: Bearer <api_key>`` (401 otherwise,
    with ``WWW-Authenticate: Bearer``; compared in constant time). body_types: per path, the media types its POST
    body may have (415 otherwise, naming them).
    """

    def __init__(self, api_key: str | None, body_types: dict[str, tuple[str, ...]]):
        self._key = check_api_key(api_key).encode("ascii") if api_key is not None else None
        self._body_types = body_types

    def refusal(self, scope: dict) -> Refusal | None:
        """Why the request of ASGI ``scope`` is refused, or None when it may go on."""
        headers = scope.get("headers", [])
        if self._key is not None and scope["path"] not in OPEN_PATHS and not self._authorized(headers):
            return Refusal(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY' with the key "
                                "the server was started with (--api-key or RUCLIP_TINY_API_KEY)",
                           ((b"www-authenticate", b'Bearer realm="ruclip-tiny"'),))
        allowed = self._body_types.get(scope["path"])
        if allowed and scope.get("method") == "POST":
            media_type = _media_type(_header(headers, b"content-type"))
            if media_type not in allowed:
                sent = f"Content-Type {media_type!r}" if media_type else "no Content-Type"
                return Refusal(415, f"{scope['path']} takes a body of type {' or '.join(allowed)}; the request has "
                                    f"{sent} (send e.g. the header 'Content-Type: {allowed[0]}')")
        return None

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        value = _header(headers, b"authorization") or b""
        scheme, _, token = value.strip().partition(b" ")
        # compare_digest takes as long for a wrong key as for a right one of the same length: no timing oracle
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)
