"""The embedding service behind the endpoints: readiness, the inference threads, image decoding and two batchers."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi import HTTPException

from ruclip_tiny import spec
from ruclip_tiny.transform import image_header_size
from runtime.embedder import Embedder, ImageItemError, image_preprocessing, preprocess_item
from runtime.serve.batching import DynamicBatcher, QueueFull
from runtime.serve.metrics import ServerMetrics
from runtime.serve.settings import ServerSettings

logger = logging.getLogger(__name__)


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
# (merging images gains nothing, BENCHMARKS.md); where texts share the inference thread with images (a backend that
# takes one call at a time), a text batch waits for at most one image call instead of a whole merged batch.
CPU_IMAGE_BATCH = 1


class EmbeddingService:
    """The embedder behind the endpoints: readiness, the inference threads, a decoding pool and two batchers.

    Backend calls happen in ONE inference thread when the backend takes calls one at a time: each batcher feeds it,
    first in first out, one call at a time, so a text batch waits for at most the one image call in progress
    (``image_batch`` images), never behind all the images queued. When the backend takes simultaneous calls
    (``Backend.concurrent_calls``: ONNX Runtime), texts get an inference thread of their own and never wait for an
    image call at all.
    """

    def __init__(self, settings: ServerSettings, metrics: ServerMetrics):
        self.settings = settings
        self.metrics = metrics
        self.embedder: Embedder | None = None
        self.state = "loading"  # loading -> warming -> ready | failed
        self.failure: str | None = None
        self._transform = image_preprocessing(settings.exif_transpose)
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="ruclip-infer")
        self._text_inference = ThreadPoolExecutor(1, thread_name_prefix="ruclip-infer-text")
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
            if self.embedder.backend.concurrent_calls:
                self.batchers["text"].executor = self._text_inference
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
        self._text_inference.shutdown(wait=True)
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
        for index, row in zip(good, rows, strict=True):
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
