"""The HTTP server (FastAPI + uvicorn): dynamic batching, limits, access checks, metrics; ``ruclip-tiny serve``.

``create_app`` (``runtime.serve.app``) builds the app, ``ServerSettings`` (``runtime.serve.settings``) holds its
limits, ``uvicorn_config`` and ``BackgroundServer`` (``runtime.serve.uvicorn_server``) run it. They are imported
from here on first use, so that ``runtime.serve.batching`` stays importable without the ``serve`` extra.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "create_app": "runtime.serve.app",
    "ServerSettings": "runtime.serve.settings",
    "uvicorn_config": "runtime.serve.uvicorn_server",
    "BackgroundServer": "runtime.serve.uvicorn_server",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
