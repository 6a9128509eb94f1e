"""OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``, for every error of the OpenAI-compatible
endpoints (their clients read nothing else); the server's other endpoints keep ``{"detail": ...}``."""

from __future__ import annotations

OPENAI_PATHS = frozenset({"/v1/embeddings", "/v1/models"})
"""The paths whose errors take OpenAI's shape."""


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: status, message, the request field it is about (``param``) and a code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_type(status: int) -> str:
    """OpenAI's ``type`` for a status: ``server_error`` for 5xx (the server's fault or its load), else
    ``invalid_request_error`` (OpenAI gives bad keys, unknown models and bad fields that type too)."""
    return "server_error" if status >= 500 else "invalid_request_error"


def _default_code(status: int) -> str | None:
    return {401: "invalid_api_key", 404: "model_not_found", 413: "request_too_large",
            415: "unsupported_media_type", 503: "service_unavailable"}.get(status)


def openai_error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type(status), "param": param,
                      "code": code if code is not None else _default_code(status)}}


def error_body(path: str, status: int, message: str, param: str | None = None) -> dict:
    """The body of an error answer on ``path``: OpenAI's shape on ``OPENAI_PATHS``, else ``{"detail": message}``."""
    if path in OPENAI_PATHS:
        return openai_error_body(status, message, param)
    return {"detail": message}
