"""Running the app under uvicorn: its ``Config`` (connection limits, the server's logging) and ``BackgroundServer``."""

from __future__ import annotations

import copy
import threading
import time

import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOG_LEVELS, LOGGING_CONFIG

from runtime.serve.http_protocol import request_deadline_protocol
from runtime.serve.settings import ServerSettings

LOGGER = "runtime.serve"
"""The logger of the server's own lines (each module logs to a child of it): ``uvicorn_config`` routes it through
uvicorn's logging."""


def logging_config(log_level: str | int | None = None) -> dict:
    """uvicorn's logging configuration with the server's logger added beside uvicorn's own: its lines go to
    uvicorn's handler (stderr, uvicorn's format) at ``log_level`` (None: INFO, as uvicorn's), where they would
    otherwise reach Python's last-resort handler (warnings and errors only, unformatted, whatever the level)."""
    if isinstance(log_level, str):
        log_level = LOG_LEVELS[log_level.lower()]
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"][LOGGER] = {"handlers": ["default"], "level": "INFO" if log_level is None else log_level,
                                 "propagate": False}
    return config


def uvicorn_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, **options) -> uvicorn.Config:
    """``uvicorn.Config`` serving ``app`` (from ``create_app``) with its settings' connection limits: the request
    deadline and the 503 with Retry-After of ``runtime.serve.http_protocol``, the keep-alive timeout, the
    concurrency limit; and the server's log lines through uvicorn's logging at its ``log_level`` (unless
    ``log_config`` is given). ``options``: other ``uvicorn.Config`` arguments (log_level, timeout_graceful_shutdown,
    ...)."""
    settings: ServerSettings = app.state.settings
    options.setdefault("log_config", logging_config(options.get("log_level")))
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
        self.config = uvicorn_config(app, host=host, port=port, log_level="warning", lifespan="on",
                                     timeout_graceful_shutdown=graceful_timeout_s)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="ruclip-serve", daemon=True)
        self._port: int | None = None

    def start(self, timeout_s: float = 60) -> BackgroundServer:
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

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
