"""``ruclip-tiny serve``: the HTTP server (FastAPI + uvicorn) on a bundle."""

from __future__ import annotations

import argparse
import os

from ..errors import RuclipTinyError
from ..transform import DEFAULT_MAX_IMAGE_PIXELS
from .options import add_backend_options, add_exif_option, non_negative_float, positive_float, positive_int


def register(commands) -> None:
    parser = commands.add_parser("serve",
                                 help="serve embeddings over HTTP with dynamic batching (needs the serve extra)")
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    add_backend_options(parser, batch_size=False)
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="ONNX Runtime intra-op threads (default: its own)")
    parser.add_argument("--max-batch", type=positive_int, default=64, help="most items per backend call (default 64)")
    parser.add_argument("--max-image-batch", type=positive_int, default=None,
                        help="most images per backend call (default: 1 on a CPU, where merging images gains nothing "
                        "and texts wait for at most one image call; else --max-batch)")
    parser.add_argument("--max-wait-ms", type=non_negative_float, default=5.0,
                        help="longest a request waits for others to join its batch (default 5)")
    parser.add_argument("--no-batching", action="store_true", help="run every request as its own backend call")
    parser.add_argument("--max-queue-items", type=positive_int, default=1024,
                        help="queued items beyond which requests get 503 + Retry-After (default 1024)")
    parser.add_argument("--max-items", type=positive_int, default=64,
                        help="texts, images or labels per request (default 64)")
    parser.add_argument("--max-image-bytes", type=positive_int, default=10 << 20,
                        help="bytes of one encoded image (10 MiB)")
    parser.add_argument("--max-text-chars", type=positive_int, default=2000,
                        help="characters of one text (default 2000)")
    parser.add_argument("--max-body-bytes", type=positive_int, default=32 << 20,
                        help="bytes of one request body (32 MiB)")
    parser.add_argument("--decode-workers", type=positive_int, default=None,
                        help="image decoding threads (min(8, CPUs))")
    parser.add_argument("--timeout-keep-alive", type=positive_float, default=5.0,
                        help="seconds an idle keep-alive connection is kept open (default 5)")
    parser.add_argument("--request-timeout", type=positive_float, default=30.0,
                        help="seconds a connection gets to deliver a whole request, headers and body; then 408 and "
                        "closed (default 30)")
    parser.add_argument("--limit-concurrency", type=positive_int, default=512,
                        help="open connections (or requests in progress) beyond which requests get 503 with "
                        "Retry-After (default 512)")
    parser.add_argument("--graceful-timeout", type=non_negative_float, default=30.0,
                        help="seconds in-flight requests get to finish on shutdown (default 30)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="log level of uvicorn and of the server's own lines (default info)")
    add_exif_option(parser)
    parser.add_argument("--max-image-pixels", type=positive_int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help="most pixels of one image, from its header before decoding; a larger one is answered "
                        "null with an errors entry (default 60000000)")
    parser.add_argument("--max-request-pixels", type=positive_int, default=256_000_000,
                        help="most pixels of all images of one request, from their headers; over it: 413 "
                        "(default 256000000)")
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' on every endpoint but /healthz and /readyz "
                        "(default: $RUCLIP_TINY_API_KEY if set, else no key)")
    parser.add_argument("--no-self-test", action="store_true",
                        help="skip the self-test (the bundle's probe through the live backend, judged with the "
                        "parity bars of its precision, before turning ready and every --self-test-interval seconds); "
                        "/v1/info says it is off")
    parser.add_argument("--self-test-interval", type=non_negative_float, default=600.0,
                        help="seconds between self-tests once ready; a failure turns /readyz 503 until one passes "
                        "(default 600; 0: only at start)")
    parser.add_argument("--allow-not-deployable", action="store_true",
                        help="serve artifacts whose parity check has not passed")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn  # a missing serve extra is named by main()

    from runtime.embedder import Embedder
    from runtime.serve.app import create_app
    from runtime.serve.settings import ServerSettings
    from runtime.serve.uvicorn_server import uvicorn_config

    try:
        settings = ServerSettings(
            max_batch=args.max_batch, max_image_batch=args.max_image_batch, max_wait_ms=args.max_wait_ms,
            batching=not args.no_batching,
            max_queue_items=args.max_queue_items, max_items=args.max_items, max_image_bytes=args.max_image_bytes,
            max_text_chars=args.max_text_chars, max_body_bytes=args.max_body_bytes,
            decode_workers=args.decode_workers, exif_transpose=args.exif_transpose,
            max_image_pixels=args.max_image_pixels, max_request_pixels=args.max_request_pixels,
            api_key=args.api_key if args.api_key is not None else os.environ.get("RUCLIP_TINY_API_KEY") or None,
            timeout_keep_alive_s=args.timeout_keep_alive, request_timeout_s=args.request_timeout,
            limit_concurrency=args.limit_concurrency,
            self_test=not args.no_self_test, self_test_interval_s=args.self_test_interval,
        )
    except ValueError as exc:
        raise RuclipTinyError(f"serve: {exc}") from None
    options = {"intra_op_threads": args.threads} if args.threads else {}
    embedder = Embedder.load(args.bundle, backend=args.backend, precision=args.precision,
                             allow_not_deployable=args.allow_not_deployable, **options)
    print(f"serving {args.bundle}: {embedder.backend.describe()} ({embedder.selection})")
    if embedder.synthetic:
        print("SYNTHETIC weights: the embeddings prove the toolchain, they mean nothing (/v1/info says so too)")
    batching = "off" if args.no_batching else f"max batch {args.max_batch}, max wait {args.max_wait_ms} ms"
    ready_after = "warm-up" if args.no_self_test else "warm-up and the self-test"
    print(f"dynamic batching: {batching}; http://{args.host}:{args.port} (/readyz turns 200 after {ready_after})")
    if settings.api_key:
        print("API key set: every endpoint but /healthz and /readyz needs 'Authorization: Bearer KEY'")
    uvicorn.Server(uvicorn_config(create_app(embedder, settings), host=args.host, port=args.port,
                                  log_level=args.log_level, timeout_graceful_shutdown=args.graceful_timeout)).run()
    return 0
