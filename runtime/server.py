"""The HTTP server behind ``ruclip-tiny serve``: embeddings and zero-shot scores over FastAPI, with dynamic batching.

Endpoints: ``POST /v1/embeddings/text``, ``POST /v1/embeddings/image`` (JSON base64 or multipart files),
``POST /v1/classify``, ``GET /healthz`` (the process answers), ``GET /readyz`` (the backend is loaded and warmed up),
``GET /metrics`` (Prometheus), ``GET /v1/info`` (what is served: model, synthetic or not, backend, precision, parity).

How a request flows: the serving middleware rejects a body over ``max_body_bytes`` (413) before or while it is
read and marks the request as arriving at its batcher(s); the endpoint validates it (422 naming the limit for
anything over a limit; never 500 for bad input), reserves room in the batcher's bounded queue (503 + Retry-After
when full), decodes images in a thread pool (an undecodable image becomes a ``null`` row and an ``errors`` entry),
and submits to the ``DynamicBatcher`` of its encoder, which merges concurrent requests into one backend call in the
single inference thread and hands each request its own rows (``runtime.batching``).

The embedder computes what ``Embedder`` computes: texts go through ``Embedder.encode_texts_detailed`` (tokenizer,
padding trimmed, truncation at 77 reported), images through the runtime's preprocessing and ``Embedder.backend``,
rows L2-normalised per request with ``l2_normalize``. FastAPI, uvicorn, prometheus-client and orjson come with the
``serve`` extra; this module imports them, so import it only where serving is wanted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, aclosing, asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from ruclip_tiny import spec
from ruclip_tiny.template import TemplateError, fill_template
from ruclip_tiny.transform import DEFAULT_MAX_IMAGE_PIXELS, image_header_size
from runtime.access import JSON, MULTIPART, RequestGate, check_api_key
from runtime.batching import BatchObserver, BatcherClosed, DynamicBatcher, QueueFull
from runtime.embedder import (
    Embedder,
    ImageItemError,
    image_preprocessing,
    l2_normalize,
    preprocess_item,
    zero_shot_probabilities,
)

logger = logging.getLogger("runtime.server")

MIB = 1 << 20


@dataclass(frozen=True)
class ServerSettings:
    """Batching and limits of one server (the ``serve`` flags of the same names).

    max_batch: most items per backend call; max_image_batch: most images per backend call (None: max_batch, but
    CPU_IMAGE_BATCH on a CPU, where the image encoder is compute-bound and merging images gains nothing, so a small
    value keeps latency down, for texts too: they wait for at most one image call); max_wait_ms: longest a request waits for others to join its batch;
    batching: False runs every request as its own backend call; max_queue_items: items admitted and waiting
    beyond which requests get 503; max_items: texts, images or labels per request; max_image_bytes: encoded
    size of one image; max_text_chars: characters of one text (a label with its template); max_body_bytes: size
    of one request body; decode_workers: image decoding threads (None: min(8, CPUs)); retry_after_s: the
    Retry-After of 503 answers; exif_transpose: turn images by their EXIF orientation before preprocessing (a
    departure from the reference, off by default); max_image_pixels: pixels of one image, from its header (over
    it: that image fails); max_request_pixels: pixels of all images of a request, from their headers (over it:
    413); api_key: when set, every endpoint but /healthz and /readyz needs ``Authorization: Bearer <api_key>``.
    Connections (``uvicorn_config``): timeout_keep_alive_s: an idle connection is closed after it;
    request_timeout_s: a connection that has not delivered a whole request (headers and body) within it is closed
    (408); limit_concurrency: open connections (or requests in progress) beyond which requests get 503 +
    Retry-After (None: no limit).
    """

    max_batch: int = 64
    max_image_batch: int | None = None
    max_wait_ms: float = 5.0
    batching: bool = True
    max_queue_items: int = 1024
    max_items: int = 64
    max_image_bytes: int = 10 * MIB
    max_text_chars: int = 2000
    max_body_bytes: int = 32 * MIB
    decode_workers: int | None = None
    retry_after_s: int = 1
    exif_transpose: bool = False
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_request_pixels: int = 256_000_000
    api_key: str | None = field(default=None, repr=False)
    timeout_keep_alive_s: float = 5.0
    request_timeout_s: float = 30.0
    limit_concurrency: int | None = 512

    def __post_init__(self):
        for name in ("max_batch", "max_queue_items", "max_items", "max_image_bytes", "max_text_chars",
                     "max_body_bytes", "retry_after_s", "max_image_pixels", "max_request_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.api_key is not None:
            check_api_key(self.api_key)
        if self.max_image_batch is not None and self.max_image_batch < 1:
            raise ValueError(f"max_image_batch must be >= 1, got {self.max_image_batch}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        for name in ("timeout_keep_alive_s", "request_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.limit_concurrency is not None and self.limit_concurrency < 1:
            raise ValueError(f"limit_concurrency must be >= 1, got {self.limit_concurrency}")


# --- request and response bodies (the OpenAPI schema) -------------------------------------------------------------

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _unicode_text(text: str) -> str:
    """``text`` unless it holds a lone surrogate: JSON's ``"\ud800"`` decodes to one, and it is not text (it
    cannot be encoded, tokenized or echoed back)."""
    if not text.isascii():  # O(1) in CPython: base64 images skip the scan
        found = _LONE_SURROGATE.search(text)
        if found:
            raise ValueError(f"holds a lone surrogate (U+{ord(found.group()):04X} at character {found.start()}), "
                             "which is not text; send valid Unicode (a \\uD800-\\uDFFF escape only as half of a pair)")
    return text


Text = Annotated[str, AfterValidator(_unicode_text)]


class TextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    texts: list[Text] = Field(min_length=1, description="texts to embed (at most --max-items, each at most "
                                                       "--max-text-chars characters; cut at 77 tokens)")
    normalize: bool = Field(True, description="L2-normalise each row")


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    images: list[Text] = Field(min_length=1, description="base64-encoded image files (JPEG, PNG, ...; a data: URL "
                                                        "prefix is accepted), at most --max-items, each at most "
                                                        "--max-image-bytes once decoded")
    normalize: bool = Field(True, description="L2-normalise each row")


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    images: list[Text] = Field(min_length=1, description="base64-encoded image files, as for /v1/embeddings/image")
    labels: list[Text] = Field(min_length=1, description="candidate labels (at most --max-items)")
    template: Text = Field("{}", description='text for each label: exactly one "{}" where the label goes, other '
                                             'braces doubled; with the label at most --max-text-chars characters')


class ItemError(BaseModel):
    index: int
    error: str


class TextResponse(BaseModel):
    model: str
    synthetic: bool
    dim: int
    embeddings: list[list[float]]
    truncated: list[int] = Field(description="indices of the texts cut at 77 tokens")


class ImageResponse(BaseModel):
    model: str
    synthetic: bool
    dim: int
    embeddings: list[list[float] | None] = Field(description="one row per image, null where it failed")
    errors: list[ItemError]


class ClassifyResponse(BaseModel):
    model: str
    synthetic: bool
    labels: list[str]
    probs: list[list[float] | None] = Field(description="per image, softmax over labels; null where it failed")
    errors: list[ItemError]


_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ImageRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "normalize": {"type": "boolean", "default": True},
                    },
                    "required": ["images"],
                }
            },
        },
    }
}


# --- metrics -------------------------------------------------------------------------------------------------------

ENDPOINTS = ("/v1/embeddings/text", "/v1/embeddings/image", "/v1/classify", "/healthz", "/readyz", "/metrics",
             "/v1/info")
# Which batchers a request to an endpoint will submit to (marked as arriving there while it is read and decoded).
ENDPOINT_KINDS = {"/v1/embeddings/text": ("text",), "/v1/embeddings/image": ("image",),
                  "/v1/classify": ("text", "image")}
# What each endpoint's POST body may be (415 otherwise): a browser sends text/plain cross-site without asking.
BODY_TYPES = {"/v1/embeddings/text": (JSON,), "/v1/embeddings/image": (JSON, MULTIPART), "/v1/classify": (JSON,)}
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    """The server's Prometheus metrics, in a registry of its own (two servers in one process do not collide)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ruclip_tiny_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram("ruclip_tiny_request_seconds", "HTTP request latency", ["endpoint"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.items = Counter("ruclip_tiny_items", "items embedded", ["kind"], registry=r)
        self.item_errors = Counter("ruclip_tiny_item_errors", "items that could not be embedded (e.g. undecodable "
                                   "images)", ["kind"], registry=r)
        self.truncated = Counter("ruclip_tiny_truncated_texts", "texts cut at 77 tokens", registry=r)
        self.batch_items = Histogram("ruclip_tiny_batch_items", "items per backend call", ["kind"],
                                     buckets=_SIZE_BUCKETS, registry=r)
        self.batch_requests = Histogram("ruclip_tiny_batch_requests", "requests merged into one backend call",
                                        ["kind"], buckets=_SIZE_BUCKETS, registry=r)
        self.backend_seconds = Histogram("ruclip_tiny_backend_seconds", "time of one backend call", ["kind"],
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("ruclip_tiny_queue_wait_seconds", "time a request waited for its batch",
                                    ["kind"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_items = Gauge("ruclip_tiny_queue_items", "items admitted and waiting for a backend call",
                                 ["kind"], registry=r)
        self.rejected = Counter("ruclip_tiny_rejected", "requests refused with 503 because the queue was full",
                                ["kind"], registry=r)
        self.ready = Gauge("ruclip_tiny_ready", "1 once the backend is loaded and warmed up", registry=r)
        self.cancelled = Counter("ruclip_tiny_cancelled_items", "items dropped before they ran because their client "
                                 "disconnected", ["kind"], registry=r)

    def observer(self) -> BatchObserver:
        def batch(kind, items, requests, seconds):
            self.batch_items.labels(kind).observe(items)
            self.batch_requests.labels(kind).observe(requests)
            self.backend_seconds.labels(kind).observe(seconds)

        return BatchObserver(
            batch=batch,
            queue_wait=lambda kind, seconds: self.queue_wait.labels(kind).observe(seconds),
            queue_depth=lambda kind, items: self.queue_items.labels(kind).set(items),
            cancelled=lambda kind, items: self.cancelled.labels(kind).inc(items),
        )


# --- the embedding service: embedder, batchers, decoding -----------------------------------------------------------


class NotReady(Exception):
    """The backend is still loading or warming up (or failed to): 503."""


def decode_image(transform, data: bytes, max_pixels: int | None = None) -> np.ndarray | str:
    """float32 [3, 224, 224] preprocessed pixels of an encoded image, or the reason it cannot be decoded (or has
    more than ``max_pixels`` pixels)."""
    outcome = preprocess_item(transform, 0, data, max_pixels)
    return outcome.reason if isinstance(outcome, ImageItemError) else outcome


def warm_up(embedder: Embedder) -> None:
    """One text and one image through the backend: loads the tokenizer and runs each graph once, so the first
    request does not pay for lazy initialisation."""
    embedder.encode_texts_detailed(["прогрев"])
    embedder.backend.encode_pixels(np.zeros((1, 3, spec.IMAGE_SIZE, spec.IMAGE_SIZE), np.float32))


# Images per backend call on a CPU unless --max-image-batch says otherwise. The image encoder is compute-bound there
# (merging images gains nothing, BENCHMARKS.md) and texts share the one inference thread: a text batch waits for at
# most one image call, ~75 ms for one image on the measured CPU, instead of a whole merged batch (seconds).
CPU_IMAGE_BATCH = 1


class EmbeddingService:
    """The embedder behind the endpoints: readiness, one inference thread, a decoding pool and two batchers.

    Backend calls all happen in ONE thread (backends take calls one at a time); each batcher feeds it, first in first
    out, one call at a time, so a text batch waits for at most the one image call in progress (``image_batch``
    images), never behind all the images queued.
    """

    def __init__(self, settings: ServerSettings, metrics: ServerMetrics):
        self.settings = settings
        self.metrics = metrics
        self.embedder: Embedder | None = None
        self.state = "loading"  # loading -> warming -> ready | failed
        self.failure: str | None = None
        self._transform = image_preprocessing(settings.exif_transpose)
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="ruclip-infer")
        self._decoding = ThreadPoolExecutor(
            settings.decode_workers or min(8, os.cpu_count() or 1), thread_name_prefix="ruclip-decode"
        )
        observer = metrics.observer()
        common = dict(
            executor=self._inference, max_wait_s=settings.max_wait_ms / 1000,
            max_queue_items=settings.max_queue_items, batching=settings.batching, observer=observer,
        )
        self.batchers = {
            "text": DynamicBatcher("text", self._run_texts, max_batch=settings.max_batch, **common),
            "image": DynamicBatcher("image", self._run_images, max_batch=self.image_batch, **common),
        }

    @property
    def image_batch(self) -> int:
        """Most images per backend call: ``max_image_batch``; unset, CPU_IMAGE_BATCH on a CPU (known once loaded),
        else ``max_batch``."""
        if self.settings.max_image_batch is not None:
            return self.settings.max_image_batch
        if self.embedder is not None and self.embedder.backend.device == "cpu":
            return min(CPU_IMAGE_BATCH, self.settings.max_batch)
        return self.settings.max_batch

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    async def prepare(self, load: Callable[[], Embedder], warmup: Callable[[Embedder], None]) -> None:
        """Load the embedder, then warm it up, in the inference thread; ``state`` follows."""
        loop = asyncio.get_running_loop()
        try:
            self.embedder = await loop.run_in_executor(self._inference, load)
            self.batchers["image"].max_batch = self.image_batch  # the device is known now
            self.state = "warming"
            await loop.run_in_executor(self._inference, warmup, self.embedder)
        except Exception as err:  # noqa: BLE001 - reported by /readyz and the log, the process keeps answering
            self.state, self.failure = "failed", f"{type(err).__name__}: {err}"
            logger.error("the backend could not be prepared: %s", self.failure)
            return
        self.state = "ready"
        self.metrics.ready.set(1)
        logger.info("ready: %s", self.embedder.backend.describe())

    def start(self) -> None:
        for batcher in self.batchers.values():
            batcher.start()

    async def stop(self) -> None:
        """Finish queued work, then release the threads and the backend."""
        for batcher in self.batchers.values():
            await batcher.close()
        self._decoding.shutdown(wait=True, cancel_futures=True)
        self._inference.shutdown(wait=True)
        if self.embedder is not None:
            self.embedder.close()

    def require_ready(self) -> Embedder:
        if not self.ready:
            why = f"the backend failed to load ({self.failure})" if self.state == "failed" else \
                f"the backend is {self.state} (see /readyz)"
            raise NotReady(f"not ready: {why}")
        return self.embedder

    # --- run in the inference thread ---

    def _run_texts(self, texts: list[str]) -> list[tuple[np.ndarray, bool]]:
        result = self.embedder.encode_texts_detailed(texts, normalize=False, batch_size=self.settings.max_batch)
        truncated = set(result.truncated)
        return [(row, index in truncated) for index, row in enumerate(result.embeddings)]

    def _run_images(self, pixels: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.embedder.encode_pixels(np.stack(pixels), batch_size=self.image_batch))

    # --- called by the endpoints, on the event loop ---

    async def embed_texts(self, texts: list[str], arrival=None) -> tuple[np.ndarray, list[int]]:
        """Raw features float32 [N, dim] and the indices cut at 77 tokens."""
        batcher = self.batchers["text"]
        admission = self._admit(batcher, len(texts))
        results = await batcher.submit(admission, texts, arrival)
        self.metrics.items.labels("text").inc(len(texts))
        truncated = [index for index, (_, cut) in enumerate(results) if cut]
        self.metrics.truncated.inc(len(truncated))
        return np.stack([row for row, _ in results]), truncated

    async def embed_images(
        self, payloads: Sequence[bytes | str], arrival=None
    ) -> tuple[list[np.ndarray | None], list[dict]]:
        """Raw features per image (None where it failed) and ``[{"index", "error"}]``; ``payloads`` holds the
        encoded bytes of each image, or a string saying why there are none (e.g. bad base64)."""
        batcher = self.batchers["image"]
        admission = self._admit(batcher, len(payloads))
        try:
            loop = asyncio.get_running_loop()
            try:
                decoded = await asyncio.gather(*(
                    loop.run_in_executor(self._decoding, decode_image, self._transform, payload,
                                         self.settings.max_image_pixels)
                    if isinstance(payload, bytes) else _completed(payload)
                    for payload in payloads
                ))
            except asyncio.CancelledError:  # the client left while its images were decoded: none will run
                self.metrics.cancelled.labels("image").inc(sum(isinstance(p, bytes) for p in payloads))
                raise
            good = [index for index, outcome in enumerate(decoded) if isinstance(outcome, np.ndarray)]
            errors = [{"index": index, "error": outcome} for index, outcome in enumerate(decoded)
                      if not isinstance(outcome, np.ndarray)]
            rows = await batcher.submit(admission, [decoded[index] for index in good], arrival)
        finally:
            admission.release()
        self.metrics.items.labels("image").inc(len(good))
        self.metrics.item_errors.labels("image").inc(len(errors))
        out: list[np.ndarray | None] = [None] * len(payloads)
        for index, row in zip(good, rows):
            out[index] = row
        return out, errors

    async def limit_pixels(self, payloads: list[bytes | str]) -> list[bytes | str]:
        """``payloads`` with each image over ``max_image_pixels`` replaced by the reason (it fails alone); raises
        413 when the images that remain hold more than ``max_request_pixels`` in all. Sizes come from the headers
        (in the decoding threads), so nothing is decoded to find them."""
        sizes = await asyncio.get_running_loop().run_in_executor(
            self._decoding, lambda: [image_header_size(p) if isinstance(p, bytes) else None for p in payloads]
        )
        settings, limited, total = self.settings, list(payloads), 0
        for index, size in enumerate(sizes):
            if size is None:
                continue  # not an image, or no readable header: decoding says why
            pixels = size[0] * size[1]
            if pixels > settings.max_image_pixels:
                limited[index] = (f"{size[0]}x{size[1]} = {pixels} pixels, more than --max-image-pixels="
                                  f"{settings.max_image_pixels}; downscale it (the model sees {spec.IMAGE_SIZE}x"
                                  f"{spec.IMAGE_SIZE})")
            else:
                total += pixels
        if total > settings.max_request_pixels:
            raise HTTPException(413, f"images: {total} pixels in all (from their headers), more than "
                                     f"--max-request-pixels={settings.max_request_pixels}; send fewer or smaller "
                                     "images per request")
        return limited

    def _admit(self, batcher: DynamicBatcher, items: int):
        try:
            return batcher.admit(items)
        except QueueFull:
            self.metrics.rejected.labels(batcher.kind).inc()
            raise


async def _completed(value):
    return value


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


# --- request parsing -----------------------------------------------------------------------------------------------


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than --max-body-bytes={limit} bytes; send fewer or smaller items "
                              "per request")


def _check_items(values: list, field: str, settings: ServerSettings) -> None:
    if len(values) > settings.max_items:
        raise HTTPException(422, f"{field}: {len(values)} items, more than --max-items={settings.max_items}; split "
                                 "the request")


def _check_text_chars(texts: list[str], field: str, settings: ServerSettings) -> None:
    for index, text in enumerate(texts):
        if len(text) > settings.max_text_chars:
            raise HTTPException(422, f"{field}[{index}]: {len(text)} characters, more than "
                                     f"--max-text-chars={settings.max_text_chars}")


def _decoded_size(text: str) -> int:
    return len(text) * 3 // 4


def _base64_payloads(images: list[str], settings: ServerSettings) -> list[bytes | str]:
    """The bytes of each base64 image, or why it is not valid base64 (a per-item error, not a request error)."""
    payloads: list[bytes | str] = []
    for index, text in enumerate(images):
        if text.startswith("data:") and "," in text[:200]:
            text = text.split(",", 1)[1]
        text = "".join(text.split())  # base64 wrapped at 76 columns is still base64
        if _decoded_size(text) > settings.max_image_bytes:
            raise HTTPException(422, f"images[{index}]: about {_decoded_size(text)} bytes, more than "
                                     f"--max-image-bytes={settings.max_image_bytes}")
        try:
            payloads.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError) as err:
            payloads.append(f"not valid base64 ({err})")
    return payloads


def _validation_error(err: ValidationError) -> RequestValidationError:
    return RequestValidationError(
        [{"type": e["type"], "loc": ("body", *e["loc"]), "msg": e["msg"]} for e in err.errors(include_input=False)]
    )


class TooManyParts(MultiPartException):
    def __init__(self, max_items: int):
        super().__init__(f"more than {max_items + 1} parts (at most --max-items={max_items} images and a normalize "
                         "field); split the request")


class _PartCountingParser(MultiPartParser):
    """starlette's multipart parser, refusing a body as soon as its part count passes ``max_items`` + 1 (the images
    and a ``normalize`` field), while it streams in: counted afterwards, 100,000 empty parts cost 5.4 s of CPU and
    135 MiB before the refusal."""

    def __init__(self, headers, stream, max_items: int):
        super().__init__(headers, stream, max_files=max_items + 1, max_fields=max_items + 1)
        self.max_items, self.parts = max_items, 0

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.max_items + 1:
            raise TooManyParts(self.max_items)
        super().on_part_begin()


async def _multipart_form(request: Request, settings: ServerSettings) -> FormData:
    try:
        async with aclosing(request.stream()) as stream:
            form = await _PartCountingParser(request.headers, stream, settings.max_items).parse()
    except MultiPartException as err:
        raise HTTPException(422, f"multipart body: {err.message}") from None
    for key, value in form.multi_items():  # a charset=utf-7 part can decode to lone surrogates
        _check_unicode(key, "multipart field name")
        if isinstance(value, str):
            _check_unicode(value, f"multipart field {key!r}")
        elif value.filename is not None:
            _check_unicode(value.filename, f"multipart file name of field {key!r}")
    return form


def _check_unicode(text: str, where: str) -> None:
    try:
        _unicode_text(text)
    except ValueError as err:
        raise HTTPException(422, f"{where}: {err}") from None


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _image_request(request: Request, settings: ServerSettings) -> tuple[list[bytes | str], bool]:
    """(payloads, normalize) of a JSON or multipart image request."""
    if _media_type(request) == MULTIPART:
        form = await _multipart_form(request, settings)
        try:
            files = [value for key, value in form.multi_items() if isinstance(value, UploadFile)]
            fields = {key: value for key, value in form.multi_items() if isinstance(value, str)}
            unknown = sorted(set(fields) - {"normalize"})
            if unknown:
                raise HTTPException(422, f"unknown form field(s) {unknown}; send image files (any field name) and "
                                         "optionally normalize=true|false")
            normalize_text = fields.get("normalize", "true").strip().lower()
            if normalize_text not in ("true", "false", "1", "0"):
                raise HTTPException(422, f"normalize: {fields['normalize']!r} is not true or false")
            if not files:
                raise HTTPException(422, "images: no image files in the multipart body")
            _check_items(files, "images", settings)
            payloads = []
            for index, upload in enumerate(files):
                data = await upload.read(settings.max_image_bytes + 1)
                if len(data) > settings.max_image_bytes:
                    raise HTTPException(422, f"images[{index}] ({upload.filename}): more than "
                                             f"--max-image-bytes={settings.max_image_bytes} bytes")
                payloads.append(data)
            return payloads, normalize_text in ("true", "1")
        finally:
            await form.close()
    body = await request.body()
    try:
        # the standard library's parser, as FastAPI's for the other endpoints: it decodes "\ud800" to a lone
        # surrogate, which validation then refuses naming its field (pydantic's own parser only says where)
        data = json.loads(body)
    except (ValueError, RecursionError) as err:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": f"invalid JSON: {err}"}]
                                     ) from None
    try:
        parsed = ImageRequest.model_validate(data)
    except ValidationError as err:
        raise _validation_error(err) from None
    _check_items(parsed.images, "images", settings)
    return _base64_payloads(parsed.images, settings), parsed.normalize


def _template_texts(template: str, labels: list[str], settings: ServerSettings) -> list[str]:
    """The text of each label; 422 for a template that is not one plain "{}", or for a text over --max-text-chars,
    found before any text is built (a format spec such as "{:>20000000}" would build 20 MB per label)."""
    try:
        return fill_template(template, labels, settings.max_text_chars, "--max-text-chars")
    except TemplateError as err:
        raise HTTPException(422, str(err)) from None


# --- the middleware: body limit, arrival marking, request metrics --------------------------------------------------


class ServingMiddleware:
    """Pure ASGI: refuses a request without the API key (401) or with a body of another type than its endpoint
    takes (415), rejects bodies over ``max_body_bytes`` (by Content-Length before reading, and while reading a
    streamed body), marks requests as arriving at their batchers, and counts requests and latency per endpoint
    (a client that left before its answer as status 499)."""

    def __init__(self, app, service: EmbeddingService):
        self.app = app
        self.service = service
        self.gate = RequestGate(service.settings.api_key, BODY_TYPES)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
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
                await _send_json(send_recording, refusal.status, {"detail": refusal.detail}, refusal.headers)
                return
            declared = dict(scope["headers"]).get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                await _send_json(send_recording, 413, {"detail": BodyTooLarge(limit).detail})
                return
            with ExitStack() as stack:
                arrivals = {kind: stack.enter_context(self.service.batchers[kind].arrival())
                            for kind in ENDPOINT_KINDS.get(scope["path"], ())}
                scope.setdefault("state", {})["arrivals"] = arrivals
                try:
                    await self.app(scope, receive_limited, send_recording)
                except BodyTooLarge as err:  # raised outside an endpoint's own error handling
                    if status["sent"]:
                        raise
                    await _send_json(send_recording, 413, {"detail": err.detail})
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


def _json(body: dict, status: int = 200) -> Response:
    # orjson writes numpy float32 rows directly, in float32's shortest form (a 768-float row stays ~8 KB)
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type="application/json")


# --- the app -------------------------------------------------------------------------------------------------------


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
    app.add_middleware(ServingMiddleware, service=service)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in err.errors()]
        summary = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'body'}: {e['msg']}" for e in errors[:5])
        return JSONResponse({"detail": errors, "error": f"invalid request: {summary}"}, status_code=422)

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, err: NotReady):
        return JSONResponse({"detail": str(err)}, 503, headers={"Retry-After": str(settings.retry_after_s)})

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, err: QueueFull):
        message = f"server busy: {err}; set by --max-queue-items={settings.max_queue_items}; retry later"
        return JSONResponse({"detail": message}, 503, headers={"Retry-After": str(settings.retry_after_s)})

    @app.exception_handler(BatcherClosed)
    async def closed(request: Request, err: BatcherClosed):
        return JSONResponse({"detail": "server shutting down"}, 503,
                            headers={"Retry-After": str(settings.retry_after_s)})

    def arrival(request: Request, kind: str):
        return request.scope.get("state", {}).get("arrivals", {}).get(kind)

    def header(embedder: Embedder) -> dict:
        return {"model": embedder.bundle.manifest.get("model_id", spec.MODEL_ID), "synthetic": embedder.synthetic}

    @app.post("/v1/embeddings/text", responses={200: {"model": TextResponse}})
    async def embed_text(body: TextRequest, request: Request):
        """Embed texts: one row per text, in order; ``truncated`` lists the texts cut at 77 tokens."""
        embedder = service.require_ready()
        _check_items(body.texts, "texts", settings)
        _check_text_chars(body.texts, "texts", settings)
        rows, truncated = await _while_connected(request, service.embed_texts(body.texts, arrival(request, "text")))
        if body.normalize:
            rows = l2_normalize(rows)
        return _json({**header(embedder), "dim": embedder.dim, "embeddings": rows, "truncated": truncated})

    @app.post("/v1/embeddings/image", responses={200: {"model": ImageResponse}}, openapi_extra=_IMAGE_BODY)
    async def embed_image(request: Request):
        """Embed images (JSON ``{"images": [base64...]}`` or multipart files): one row per image, in order; an
        image that cannot be decoded gets ``null`` and an entry in ``errors``, the others are still answered."""
        embedder = service.require_ready()
        payloads, normalize = await _image_request(request, settings)
        payloads = await service.limit_pixels(payloads)
        rows, errors = await _while_connected(request, service.embed_images(payloads, arrival(request, "image")))
        if normalize:
            rows = [None if row is None else l2_normalize(row[None])[0] for row in rows]
        return _json({**header(embedder), "dim": embedder.dim, "embeddings": rows, "errors": errors})

    @app.post("/v1/classify", responses={200: {"model": ClassifyResponse}})
    async def classify(body: ClassifyRequest, request: Request):
        """Zero-shot: per image, softmax over labels of ``logit_scale · cosine(image, text(template(label)))``."""
        embedder = service.require_ready()
        _check_items(body.images, "images", settings)
        _check_items(body.labels, "labels", settings)
        texts = _template_texts(body.template, body.labels, settings)
        payloads = await service.limit_pixels(_base64_payloads(body.images, settings))
        (text_rows, _), (image_rows, errors) = await _while_connected(request, asyncio.gather(
            service.embed_texts(texts, arrival(request, "text")),
            service.embed_images(payloads, arrival(request, "image")),
        ))
        good = [index for index, row in enumerate(image_rows) if row is not None]
        probs: list[np.ndarray | None] = [None] * len(image_rows)
        if good:
            scores = zero_shot_probabilities(np.stack([image_rows[i] for i in good]), text_rows, embedder.logit_scale)
            for index, row in zip(good, scores):
                probs[index] = row
        return _json({**header(embedder), "labels": body.labels, "probs": probs, "errors": errors})

    @app.get("/healthz")
    async def healthz():
        """200 while the process serves requests (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        """200 once the backend is loaded and warmed up, 503 before (and if it failed to load)."""
        body = {"ready": service.ready, "state": service.state}
        if service.failure:
            body["error"] = service.failure
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
        body = {"ready": service.ready, "state": service.state,
                "batching": {"enabled": settings.batching, "max_batch": settings.max_batch,
                             "max_image_batch": service.image_batch, "max_wait_ms": settings.max_wait_ms,
                             "max_queue_items": settings.max_queue_items},
                "limits": {key: value for key, value in asdict(settings).items()
                           if key.startswith("max_") and key not in ("max_batch", "max_image_batch", "max_wait_ms",
                                                                     "max_queue_items")},
                "api_key_required": settings.api_key is not None}
        if service.embedder is not None:
            body.update(describe_embedder(service.embedder))
        return body

    return app


def describe_embedder(embedder: Embedder) -> dict:
    """Model, synthetic, backend, precision, device, dim, logit scale and the parity status of the served
    artifacts, from the manifest."""
    manifest = embedder.bundle.manifest
    backend = embedder.backend
    parity = {}
    for key, entry in manifest.get("artifacts", {}).items():
        if not key.endswith(f".{embedder.precision}") or entry.get("format") not in (None, "onnx", "plan"):
            continue
        result = manifest.get("parity", {}).get(key)
        parity[key] = {
            "deployable": entry.get("deployable"),
            "passed": None if not isinstance(result, dict) else not result.get("failures"),
        }
    return {
        "model": manifest.get("model_id", spec.MODEL_ID),
        "synthetic": embedder.synthetic,
        "backend": backend.name,
        "precision": embedder.precision,
        "device": backend.device,
        "selection": embedder.selection,
        "dim": embedder.dim,
        "logit_scale": embedder.logit_scale,
        "bundle": Path(embedder.bundle.root).resolve().name,  # its name: where it lies is the host's business
        "parity": parity,
    }


# --- running it ----------------------------------------------------------------------------------------------------


def uvicorn_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, **options):
    """``uvicorn.Config`` serving ``app`` (from ``create_app``) with its settings' connection limits: the request
    deadline and the 503 with Retry-After of ``runtime.http_protocol``, the keep-alive timeout, the concurrency
    limit. ``options``: other ``uvicorn.Config`` arguments (log_level, timeout_graceful_shutdown, ...)."""
    import uvicorn

    from runtime.http_protocol import request_deadline_protocol

    settings: ServerSettings = app.state.settings
    return uvicorn.Config(app, host=host, port=port,
                          http=request_deadline_protocol(settings.request_timeout_s, settings.retry_after_s),
                          timeout_keep_alive=settings.timeout_keep_alive_s,
                          limit_concurrency=settings.limit_concurrency, **options)


class BackgroundServer:
    """uvicorn serving ``app`` on ``host:port`` in a thread (tests, benchmarks); ``port=0`` picks a free port.

    ``start()`` returns once the socket listens (not once the backend is ready: poll /readyz); ``stop()`` shuts
    down gracefully (in-flight requests finish) and joins the thread.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, graceful_timeout_s: float = 30):
        import uvicorn

        self.config = uvicorn_config(app, host=host, port=port, log_level="warning", lifespan="on",
                                     timeout_graceful_shutdown=graceful_timeout_s)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="ruclip-serve", daemon=True)
        self._port: int | None = None

    def start(self, timeout_s: float = 60) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (see its log)")
            time.sleep(0.01)
        self._port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def port(self) -> int:
        """The port listened on (known once started)."""
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def stop(self, timeout_s: float = 60) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
