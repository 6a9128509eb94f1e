"""The serving middleware (pure ASGI): access checks, the body limit, arrival marking and request metrics.

What it knows of the endpoints comes from the app's routes: their paths (the metrics' endpoint labels), the body
types each POST route documents (415 otherwise) and the batchers each endpoint submits to (``submits_to``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack

import orjson
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect
from starlette.routing import Router

from runtime.serve.access import JSON, RequestGate
from runtime.serve.metrics import OTHER_ENDPOINT, endpoint_labels
from runtime.serve.openai_errors import error_body
from runtime.serve.request_parsing import BodyTooLarge
from runtime.serve.service import EmbeddingService

logger = logging.getLogger(__name__)


def submits_to(*kinds: str) -> Callable[[Callable], Callable]:
    """Decorator: the endpoint submits to the batchers ``kinds`` ("text", "image"), so the middleware marks its
    requests as arriving there while their bodies are read and decoded (a batch may wait for them)."""

    def mark(endpoint: Callable) -> Callable:
        endpoint.batchers = kinds
        return endpoint

    return mark


def body_types(route: APIRoute) -> tuple[str, ...]:
    """The media types a POST body of ``route`` may have: those its OpenAPI request body documents (the image
    endpoint: JSON or multipart), else JSON when the endpoint takes a body model, else none (nothing is checked)."""
    documented = (route.openapi_extra or {}).get("requestBody", {}).get("content")
    if documented:
        return tuple(documented)
    return (JSON,) if route.body_field is not None else ()


class ServingMiddleware:
    """Pure ASGI: refuses a request without the API key (401) or with a body of another type than its endpoint
    takes (415), rejects bodies over ``max_body_bytes`` (by Content-Length before reading, and while reading a
    streamed body), marks requests as arriving at their batchers, and counts requests and latency per endpoint
    (a client that left before its answer as status 499).

    router: the app's router; its routes are read when the middleware is built (at the first request, once the
    app has all its routes).
    """

    def __init__(self, app, service: EmbeddingService, router: Router):
        self.app = app
        self.service = service
        routes = [route for route in router.routes if isinstance(route, APIRoute)]
        self.endpoints = endpoint_labels(routes)
        # which batchers a request to a path will submit to (marked as arriving there while it is read and decoded)
        self.batchers = {route.path: route.endpoint.batchers for route in routes
                         if getattr(route.endpoint, "batchers", ())}
        # what each POST body may be (415 otherwise): a browser sends text/plain cross-site without asking
        posted = {route.path: body_types(route) for route in routes if "POST" in route.methods}
        self.gate = RequestGate(service.settings.api_key, {path: types for path, types in posted.items() if types})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in self.endpoints else OTHER_ENDPOINT
        limit = self.service.settings.max_body_bytes
        started = time.perf_counter()
        status = {"code": 500, "sent": False, "client_gone": False}

        async def send_recording(message):
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        received = 0

        async def receive_limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            elif message["type"] == "http.disconnect" and not status["sent"]:
                status["client_gone"] = True
            return message

        try:
            refusal = self.gate.refusal(scope)
            if refusal is not None:
                body = error_body(scope["path"], refusal.status, refusal.detail)
                await _send_json(send_recording, refusal.status, body, refusal.headers)
                return
            declared = dict(scope["headers"]).get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                await _send_json(send_recording, 413, error_body(scope["path"], 413, BodyTooLarge(limit).detail))
                return
            with ExitStack() as stack:
                arrivals = {kind: stack.enter_context(self.service.batchers[kind].arrival())
                            for kind in self.batchers.get(scope["path"], ())}
                scope.setdefault("state", {})["arrivals"] = arrivals
                try:
                    await self.app(scope, receive_limited, send_recording)
                except BodyTooLarge as err:  # raised outside an endpoint's own error handling
                    if status["sent"]:
                        raise
                    await _send_json(send_recording, 413, error_body(scope["path"], 413, err.detail))
                except ClientDisconnect:  # the body stopped coming: nobody to answer, nothing went wrong here
                    status["client_gone"] = True
        finally:
            if status["client_gone"]:
                # whatever the app answered after that (FastAPI: a 400 for the unreadable body) reached nobody
                status["code"] = 499
                logger.warning("%s %s: the client closed the connection before the answer (counted as status 499)",
                               scope.get("method"), scope["path"])
            metrics = self.service.metrics
            metrics.requests.labels(endpoint, str(status["code"])).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


async def _send_json(send, status: int, body: dict, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    content = orjson.dumps(body)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": content})
