"""The settings of one server: batching, request limits and connection limits (the ``serve`` flags)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ruclip_tiny.transform import DEFAULT_MAX_IMAGE_PIXELS
from runtime.serve.access import check_api_key

MIB = 1 << 20


@dataclass(frozen=True)
class ServerSettings:
    """Batching and limits of one server (the ``serve`` flags of the same names).

    max_batch: most items per backend call; max_image_batch: most images per backend call (None: max_batch, but
    ``service.CPU_IMAGE_BATCH`` on a CPU, where the image encoder is compute-bound and merging images gains nothing,
    so a small value keeps latency down, for texts too: they wait for at most one image call); max_wait_ms: longest
    a request waits for others to join its batch; batching: False runs every request as its own backend call;
    max_queue_items: items admitted and waiting beyond which requests get 503; max_items: texts, images or labels
    per request; max_image_bytes: encoded size of one image; max_text_chars: characters of one text (a label with
    its template); max_body_bytes: size of one request body; decode_workers: image decoding threads (None: min(8,
    CPUs)); retry_after_s: the Retry-After of 503 answers; exif_transpose: turn images by their EXIF orientation
    before preprocessing (a departure from the reference, off by default); max_image_pixels: pixels of one image,
    from its header (over it: that image fails); max_request_pixels: pixels of all images of a request, from their
    headers (over it: 413); api_key: when set, every endpoint but /healthz and /readyz needs ``Authorization: Bearer
    <api_key>``.
    Connections (``uvicorn_config``): timeout_keep_alive_s: an idle connection is closed after it;
    request_timeout_s: a connection that has not delivered a whole request (headers and body) within it is closed
    (408); limit_concurrency: open connections (or requests in progress) beyond which requests get 503 +
    Retry-After (None: no limit).
    Self-test (``runtime.serve.self_test``): self_test: before turning ready, run the bundle's probe through the live
    backend and judge it with the parity bars of its precision (False: skip it; /v1/info says so);
    self_test_interval_s: then again every so many seconds (0: only at start).
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
    self_test: bool = True
    self_test_interval_s: float = 600.0

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
        if not self.self_test_interval_s >= 0:
            raise ValueError(f"self_test_interval_s must be >= 0, got {self.self_test_interval_s}")
        if self.limit_concurrency is not None and self.limit_concurrency < 1:
            raise ValueError(f"limit_concurrency must be >= 1, got {self.limit_concurrency}")
