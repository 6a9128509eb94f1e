"""The HTTP server behind ``ruclip-tiny serve``: embeddings and zero-shot scores over FastAPI, with dynamic batching.

Endpoints: ``POST /v1/embeddings/text``, ``POST /v1/embeddings/image`` (JSON base64 or multipart files),
``POST /v1/classify``, ``GET /healthz`` (the process answers), ``GET /readyz`` (the backend is loaded, warmed up and
its self-test passed), ``GET /metrics`` (Prometheus), ``GET /v1/info`` (what is served: model, synthetic or not,
backend, precision, parity, self-test); and the OpenAI-compatible ``POST /v1/embeddings`` and ``GET /v1/models``
(``runtime.serve.openai_api``).

How a request flows: the serving middleware rejects a body over ``max_body_bytes`` (413) before or while it is
read and marks the request as arriving at its batcher(s); the endpoint validates it (422 naming the limit for
anything over a limit; never 500 for bad input), reserves room in the batcher's bounded queue (503 + Retry-After
when full), decodes images in a thread pool (an undecodable image becomes a ``null`` row and an ``errors`` entry),
and submits to the ``DynamicBatcher`` of its encoder, which merges concurrent requests into one backend call in the
single inference thread and hands each request its own rows (``runtime.serve.batching``).

The embedder computes what ``Embedder`` computes: texts as ``Embedder.encode_texts_detailed`` (tokenizer, padding
trimmed, truncation at 77 reported), images through the runtime's preprocessing and ``Embedder.backend``,
rows L2-normalised per request with ``l2_normalize``. FastAPI, uvicorn, prometheus-client and orjson come with the
``serve`` extra; this module imports them, so import it only where serving is wanted.

This module holds the app and its endpoints; the rest of the server lies beside it in ``runtime.serve``: settings,
schemas, request_parsing, service (the embedder and batchers), self_test, batching, middleware, access, metrics,
info, openai_api, openai_errors, http_protocol and uvicorn_server (``uvicorn_config``, ``BackgroundServer``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from runtime.embedder import Embedder, l2_normalize, zero_shot_probabilities
from runtime.serve.batching import BatcherClosed, QueueFull
from runtime.serve.info import server_info
from runtime.serve.metrics import ServerMetrics
from runtime.serve.middleware import ServingMiddleware, submits_to
from runtime.serve.openai_api import add_openai_routes
from runtime.serve.openai_errors import OPENAI_PATHS, OpenAIError, openai_error_body
from runtime.serve.request_parsing import (
    base64_payloads,
    check_items,
    check_text_chars,
    image_request,
    template_texts,
)
from runtime.serve.schemas import (
    IMAGE_BODY,
    ClassifyRequest,
    ClassifyResponse,
    ImageResponse,
    TextRequest,
    TextResponse,
)
from runtime.serve.service import EmbeddingService, NotReady, warm_up
from runtime.serve.settings import ServerSettings

logger = logging.getLogger(__name__)

def create_app(
    embedder: Embedder | Callable[[], Embedder],
    settings: ServerSettings | None = None,
    warmup: Callable[[Embedder], None] = warm_up,
) -> FastAPI:
    """The FastAPI app serving ``embedder`` (an Embedder, or a callable that loads one in the background).

    The app answers /healthz at once; /readyz and the embedding endpoints answer 503 until the embedder is loaded
    and ``warmup`` has run on it. On shutdown queued requests are finished before the backend is closed.
    """
    settings = settings or ServerSettings()
    metrics = ServerMetrics()
    service = EmbeddingService(settings, metrics)
    load = embedder if callable(embedder) and not isinstance(embedder, Embedder) else (lambda: embedder)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        preparing = asyncio.get_running_loop().create_task(service.prepare(load, warmup))
        try:
            yield
        finally:
            if not preparing.done():
                await asyncio.wait([preparing])
            await service.stop()

    app = FastAPI(
        title="ruclip-tiny",
        summary="RuCLIP tiny embeddings (Russian CLIP) with dynamic batching",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.settings = settings

    def openai(request: Request) -> bool:
        return request.url.path in OPENAI_PATHS

    def unavailable(request: Request, message: str) -> JSONResponse:
        body = openai_error_body(503, message) if openai(request) else {"detail": message}
        return JSONResponse(body, 503, headers={"Retry-After": str(settings.retry_after_s)})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in err.errors()]
        summary = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'body'}: {e['msg']}" for e in errors[:5])
        if openai(request):
            field = errors[0]["loc"][1] if errors and len(errors[0]["loc"]) > 1 else None
            param = field if isinstance(field, str) else None  # a field name, not a position in invalid JSON
            return JSONResponse(openai_error_body(422, f"invalid request: {summary}", param), status_code=422)
        return JSONResponse({"detail": errors, "error": f"invalid request: {summary}"}, status_code=422)

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, err: OpenAIError):
        if err.status >= 500:
            logger.error("%s %s: %s", request.method, request.url.path, err.message)
        return JSONResponse(openai_error_body(err.status, err.message, err.param, err.code), err.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        if openai(request):
            return JSONResponse(openai_error_body(err.status_code, str(err.detail)), err.status_code,
                                headers=getattr(err, "headers", None))
        return await http_exception_handler(request, err)

    @app.exception_handler(Exception)
    async def server_error(request: Request, err: Exception):  # the traceback is logged by the server after this
        if openai(request):
            return JSONResponse(openai_error_body(500, f"internal server error ({type(err).__name__})"), 500)
        return PlainTextResponse("Internal Server Error", 500)

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, err: NotReady):
        return unavailable(request, str(err))

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, err: QueueFull):
        return unavailable(request, f"server busy: {err}; set by --max-queue-items={settings.max_queue_items}; "
                                    "retry later")

    @app.exception_handler(BatcherClosed)
    async def closed(request: Request, err: BatcherClosed):
        return unavailable(request, "server shutting down")

    def arrival(request: Request, kind: str):
        return request.scope.get("state", {}).get("arrivals", {}).get(kind)

    def header(embedder: Embedder) -> dict:
        return {"model": embedder.bundle.manifest.model_id, "synthetic": embedder.synthetic}

    @app.post("/v1/embeddings/text", responses={200: {"model": TextResponse}})
    @submits_to("text")
    async def embed_text(body: TextRequest, request: Request):
        """Embed texts: one row per text, in order; ``truncated`` lists the texts cut at 77 tokens."""
        embedder = service.require_ready()
        check_items(body.texts, "texts", settings)
        check_text_chars(body.texts, "texts", settings)
        embedded = await _while_connected(request, service.embed_texts(body.texts, arrival(request, "text")))
        rows, truncated = embedded.features, embedded.truncated
        if body.normalize:
            rows = l2_normalize(rows)
        return _json({**header(embedder), "dim": embedder.dim, "embeddings": rows, "truncated": truncated})

    @app.post("/v1/embeddings/image", responses={200: {"model": ImageResponse}}, openapi_extra=IMAGE_BODY)
    @submits_to("image")
    async def embed_image(request: Request):
        """Embed images (JSON ``{"images": [base64...]}`` or multipart files): one row per image, in order; an
        image that cannot be decoded gets ``null`` and an entry in ``errors``, the others are still answered."""
        embedder = service.require_ready()
        payloads, normalize = await image_request(request, settings)
        payloads = await service.limit_pixels(payloads)
        rows, errors = await _while_connected(request, service.embed_images(payloads, arrival(request, "image")))
        if normalize:
            rows = [None if row is None else l2_normalize(row[None])[0] for row in rows]
        return _json({**header(embedder), "dim": embedder.dim, "embeddings": rows, "errors": errors})

    @app.post("/v1/classify", responses={200: {"model": ClassifyResponse}})
    @submits_to("text", "image")
    async def classify(body: ClassifyRequest, request: Request):
        """Zero-shot: per image, softmax over labels of ``logit_scale · cosine(image, text(template(label)))``."""
        embedder = service.require_ready()
        check_items(body.images, "images", settings)
        check_items(body.labels, "labels", settings)
        texts = template_texts(body.template, body.labels, settings)
        payloads = await service.limit_pixels(base64_payloads(body.images, settings))
        texts_embedded, (image_rows, errors) = await _while_connected(request, asyncio.gather(
            service.embed_texts(texts, arrival(request, "text")),
            service.embed_images(payloads, arrival(request, "image")),
        ))
        good = [index for index, row in enumerate(image_rows) if row is not None]
        probs: list[np.ndarray | None] = [None] * len(image_rows)
        if good:
            scores = zero_shot_probabilities(np.stack([image_rows[i] for i in good]), texts_embedded.features,
                                             embedder.logit_scale)
            for index, row in zip(good, scores, strict=True):
                probs[index] = row
        return _json({**header(embedder), "labels": body.labels, "probs": probs, "errors": errors})

    @app.get("/healthz")
    async def healthz():
        """200 while the process serves requests (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        """200 once the backend is loaded, warmed up and its self-test passed; 503 before, and while it failed to
        load or its last self-test failed (the failing metric in ``error`` and ``self_test``)."""
        body = {"ready": service.ready, "state": service.state}
        if service.failure:
            body["error"] = service.failure
        if service.self_test.last is not None:
            body["self_test"] = service.self_test.last.to_json()
        if service.ready:
            return body
        return JSONResponse(body, 503, headers={"Retry-After": str(settings.retry_after_s)})

    @app.get("/metrics")
    async def metrics_endpoint():
        """Prometheus text format: requests, items, batch sizes, queue wait, latency histograms, errors."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/info")
    async def info():
        """What this server serves: model, synthetic or not, backend in use, precision, parity status."""
        return server_info(service)

    add_openai_routes(app, service, arrival, _while_connected, _json)

    # Added last: it reads the routes (paths, body types, batchers) when it is built, at the first request.
    app.add_middleware(ServingMiddleware, service=service, router=app.router)
    return app


def _json(body: dict, status: int = 200) -> Response:
    # orjson writes numpy float32 rows directly, in float32's shortest form (a 768-float row stays ~8 KB)
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type="application/json")


async def _while_connected(request: Request, work: Awaitable):
    """``work``'s result, unless the client disconnects first: then ``work`` is cancelled (items still queued are
    dropped unrun and counted in ``ruclip_tiny_cancelled_items_total``) and ClientDisconnect is raised.

    Only once the body has been read: from then on the request's receive channel has one thing left to say,
    ``http.disconnect``, when the client goes (or once the answer is sent, by which time this has returned).
    """
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request.receive))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request itself was cancelled (server shutdown): so is its work
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.wait((task,))  # let it unwind: its queued items leave the batcher's queue before this returns
    if not task.cancelled():
        task.exception()  # retrieved: nobody is left to tell
    raise ClientDisconnect()


async def _disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
