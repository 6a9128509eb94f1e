"""The embedding service behind the endpoints: readiness, the self-test, the inference threads, image decoding and
two batchers."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from fastapi import HTTPException

from ruclip_tiny import spec
from ruclip_tiny.transform import image_header_size
from runtime.embedder import Embedder, ImageItemError, image_preprocessing, preprocess_item
from runtime.serve.batching import DynamicBatcher, QueueFull
from runtime.serve.metrics import ServerMetrics
from runtime.serve.self_test import SelfTest, SelfTestResult
from runtime.serve.settings import ServerSettings

logger = logging.getLogger(__name__)


class NotReady(Exception):
    """The backend is still loading or warming up (or failed to): 503."""


def decode_image(transform, data: bytes, max_pixels: int | None = None) -> np.ndarray | str:
    """float32 [3, 224, 224] preprocessed pixels of an encoded image, or the reason it cannot be decoded (or has
    more than ``max_pixels`` pixels)."""
    outcome = preprocess_item(transform, 0, data, max_pixels)
    return outcome.reason if isinstance(outcome, ImageItemError) else outcome


@dataclass(frozen=True)
class TextRows:
    """What the text batcher gives back for a request: raw features float32 [N, dim]; the indices cut at 77 tokens;
    the tokens each text became ([CLS] and [SEP] included, after truncation)."""

    features: np.ndarray
    truncated: list[int]
    tokens: list[int]


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
        self.state = "loading"  # loading -> warming -> self-testing -> ready | failed (ready <-> failed: self-test)
        self.failure: str | None = None
        self.self_test = SelfTest(metrics)
        self._self_tests: asyncio.Task | None = None
        self._transform = image_preprocessing(settings.exif_transpose)
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="ruclip-infer")
        self._text_inference = ThreadPoolExecutor(1, thread_name_prefix="ruclip-infer-text")
        self._self_testing = ThreadPoolExecutor(1, thread_name_prefix="ruclip-self-test")
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
        """Load the embedder, warm it up and self-test it, in the inference thread; ``state`` follows. With a
        self-test interval, the self-test then runs again every so many seconds until ``stop``."""
        loop = asyncio.get_running_loop()
        try:
            self.embedder = await loop.run_in_executor(self._inference, load)
            self.batchers["image"].max_batch = self.image_batch  # the device is known now
            if self.embedder.backend.concurrent_calls:
                self.batchers["text"].executor = self._text_inference
            self._describe_model()
            self.state = "warming"
            await loop.run_in_executor(self._inference, warmup, self.embedder)
        except Exception as err:  # noqa: BLE001 - reported by /readyz and the log, the process keeps answering
            self.state, self.failure = "failed", f"{type(err).__name__}: {err}"
            logger.error("the backend could not be prepared: %s", self.failure)
            return
        if self.settings.self_test:
            self.state = "self-testing"
            await self.run_self_test()
            if self.settings.self_test_interval_s > 0:
                self._self_tests = loop.create_task(self._self_test_loop(), name="self-test")
            if self.state == "failed":
                return
        self._turn_ready()
        logger.info("ready: %s", self.embedder.backend.describe())

    def _turn_ready(self) -> None:
        self.state, self.failure = "ready", None
        self.metrics.ready.set(1)

    async def run_self_test(self) -> SelfTestResult:
        """Run the self-test and act on it: a failure turns the server not ready (503, /readyz says why) with one
        error line in the log; a pass after a failed self-test turns it ready again.

        Each backend call of the probe (one batch of one encoder) takes its turn in the image inference thread,
        between batches of requests: an image request waits for at most one of them, not the whole self-test, and
        where texts have their own thread (``Backend.concurrent_calls``) they never wait for it (the probe's texts
        are 77 tokens long: in the text thread a short text would wait behind them; BENCHMARKS.md)."""
        result = await asyncio.get_running_loop().run_in_executor(
            self._self_testing, self.self_test.run, self.embedder, self._inference, self._inference
        )
        if not result.passed:
            was = self.state
            self.state, self.failure = "failed", f"self-test failed: {result.summary}"
            self.metrics.ready.set(0)
            if was != "failed":
                logger.error("%s; /readyz answers 503 until a self-test passes", self.failure)
        elif self.state == "failed":
            self._turn_ready()
            logger.info("self-test passed again: ready")
        return result

    async def _self_test_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.self_test_interval_s)
            await self.run_self_test()

    def _describe_model(self) -> None:
        """``ruclip_tiny_model_info``: the backend, precision, synthetic or not, and the sha256 of the artifacts the
        backend serves (empty where it serves none of the bundle's files, as the torch backend)."""
        backend, artifacts = self.embedder.backend, self.embedder.bundle.artifacts
        sha = {}
        for encoder in (spec.VISUAL.name, spec.TEXTUAL.name):
            key = backend.artifact_key(encoder)
            sha[f"{encoder}_sha256"] = artifacts[key].sha256 if key in artifacts else ""
        self.metrics.model_info.info({"backend": backend.name, "precision": self.embedder.precision,
                                      "synthetic": str(self.embedder.synthetic).lower(), **sha})

    def start(self) -> None:
        for batcher in self.batchers.values():
            batcher.start()

    async def stop(self) -> None:
        """Finish queued work, then release the threads and the backend."""
        if self._self_tests is not None:
            self._self_tests.cancel()
            await asyncio.wait([self._self_tests])
        for batcher in self.batchers.values():
            await batcher.close()
        # a self-test in progress finishes first: its calls need the inference threads
        await asyncio.get_running_loop().run_in_executor(None, self._self_testing.shutdown)
        self._decoding.shutdown(wait=True, cancel_futures=True)
        self._inference.shutdown(wait=True)
        self._text_inference.shutdown(wait=True)
        if self.embedder is not None:
            self.embedder.close()

    def require_ready(self) -> Embedder:
        if not self.ready:
            if self.state == "failed" and self.failure.startswith("self-test"):
                why = f"the {self.failure} (see /readyz)"
            elif self.state == "failed":
                why = f"the backend failed to load ({self.failure})"
            else:
                why = f"the backend is {self.state} (see /readyz)"
            raise NotReady(f"not ready: {why}")
        return self.embedder

    # --- run in the inference thread ---

    def _run_texts(self, texts: list[str]) -> list[tuple[np.ndarray, bool, int]]:
        """(raw row, cut at 77 tokens, tokens) per text. What ``Embedder.encode_texts_detailed`` computes for one
        chunk (the batcher never passes more than ``max_batch`` texts), with its two stages timed apart."""
        embedder, stage = self.embedder, self.metrics.stage_seconds
        started = time.perf_counter()
        encoded = embedder.tokenizer.encode(texts)
        ids, mask = encoded.trimmed() if embedder.trim_padding else (encoded.input_ids, encoded.attention_mask)
        tokenized = time.perf_counter()
        rows = np.asarray(embedder.backend.encode_tokens(ids, mask), np.float32)
        stage.labels("text", "tokenize").observe(tokenized - started)
        stage.labels("text", "encode").observe(time.perf_counter() - tokenized)
        self.metrics.observe_rows("text", rows)
        truncated = set(encoded.truncated)
        return [(row, index in truncated, int(encoded.lengths[index])) for index, row in enumerate(rows)]

    def _run_images(self, pixels: list[np.ndarray]) -> list[np.ndarray]:
        started = time.perf_counter()
        rows = self.embedder.encode_pixels(np.stack(pixels), batch_size=self.image_batch)
        self.metrics.stage_seconds.labels("image", "encode").observe(time.perf_counter() - started)
        self.metrics.observe_rows("image", rows)
        return list(rows)

    def _decode(self, payload: bytes) -> np.ndarray | str:
        started = time.perf_counter()
        try:
            return decode_image(self._transform, payload, self.settings.max_image_pixels)
        finally:
            self.metrics.stage_seconds.labels("image", "decode").observe(time.perf_counter() - started)

    # --- called by the endpoints, on the event loop ---

    async def embed_texts(self, texts: list[str], arrival=None) -> TextRows:
        """Raw features, the indices cut at 77 tokens and the tokens of each text."""
        batcher = self.batchers["text"]
        admission = self._admit(batcher, len(texts))
        results = await batcher.submit(admission, texts, arrival)
        self.metrics.items.labels("text").inc(len(texts))
        truncated = [index for index, (_, cut, _) in enumerate(results) if cut]
        self.metrics.truncated.inc(len(truncated))
        return TextRows(np.stack([row for row, _, _ in results]), truncated, [tokens for _, _, tokens in results])

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
                    loop.run_in_executor(self._decoding, self._decode, payload)
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
