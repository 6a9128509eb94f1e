"""The OpenAI-compatible endpoints: ``POST /v1/embeddings`` and ``GET /v1/models``.

Most clients, vector databases and LLM frameworks speak to embedding servers through the OpenAI embeddings API.
Here it runs on the server's own machinery: the same limits, batchers, access checks and metrics as the other
endpoints. Items of ``input``: a data URI of an image (``data:image/png;base64,...``) is embedded as an image; an
item starting with ``http://`` or ``https://`` is refused (422: the server fetches nothing); anything else is text;
``"modality": "text" | "image"`` forces one (forced text may start with a URL scheme: it is only text then).
Rows are L2-normalised, as OpenAI's are; ``encoding_format: "base64"`` sends each row as the base64 of its float32
little-endian bytes. Every error of these endpoints has OpenAI's shape (``runtime.serve.openai_errors``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
from datetime import datetime
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from ruclip_tiny import spec
from runtime.bundle import MANIFEST
from runtime.embedder import Embedder, l2_normalize
from runtime.serve.middleware import submits_to
from runtime.serve.openai_errors import OpenAIError
from runtime.serve.schemas import unicode_text
from runtime.serve.service import EmbeddingService, TextRows
from runtime.serve.settings import ServerSettings

OWNED_BY = "ruclip-tiny"
_URL_SCHEMES = ("http://", "https://")
_IMAGE_DATA_URI = "data:image/"


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request, with ``modality`` added."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="the served model's id (GET /v1/models)")
    input: str | list[Any] = Field(description="a text or image data URI, or a list of them (at most --max-items)")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: rows as JSON numbers; base64: each row as base64 of float32 little-endian")
    dimensions: int | None = Field(None, description=f"only {spec.EMBED_DIM} (the model's dimension) is served")
    user: str | None = Field(None, description="accepted and ignored")
    modality: Literal["text", "image"] | None = Field(
        None, description="force every item to be text or an image (default: a data:image/ URI is an image, "
        "anything else text)")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int = Field(description="tokens of the text items, [CLS] and [SEP] included, after truncation")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


def check_model(model: str, embedder: Embedder) -> None:
    """404 (OpenAI's ``model_not_found``) unless ``model`` names the served model."""
    served = embedder.bundle.manifest.model_id
    if model != served:
        raise OpenAIError(404, f"model {model!r} is not served here; this server serves {served!r} "
                               "(GET /v1/models)", param="model")


def split_items(body: EmbeddingsRequest, settings: ServerSettings) -> tuple[dict[int, str], dict[int, bytes]]:
    """The text items and the image items (decoded bytes) of a request, by their index in ``input``; 422 naming
    the field and the item for anything it cannot take."""
    items = [body.input] if isinstance(body.input, str) else body.input
    if body.dimensions is not None and body.dimensions != spec.EMBED_DIM:
        raise OpenAIError(422, f"dimensions: {body.dimensions} is not served; this model's embeddings have "
                               f"{spec.EMBED_DIM} dimensions (leave dimensions out, or send {spec.EMBED_DIM})",
                          param="dimensions")
    if not items:
        raise OpenAIError(422, "input: an empty list; send at least one text or image", param="input")
    if len(items) > settings.max_items:
        raise OpenAIError(422, f"input: {len(items)} items, more than --max-items={settings.max_items}; split the "
                               "request", param="input")
    texts: dict[int, str] = {}
    images: dict[int, bytes] = {}
    for index, item in enumerate(items):
        where = f"input[{index}]"
        if not isinstance(item, str):
            kind = "token arrays are" if isinstance(item, int | list) else f"{type(item).__name__} is"
            raise OpenAIError(422, f"{where}: {kind} not accepted; send each item as a string (a text, or an image "
                                   "as a data URI: data:image/png;base64,...)", param="input")
        try:
            unicode_text(item)
        except ValueError as err:
            raise OpenAIError(422, f"{where}: {err}", param="input") from None
        if body.modality != "text" and item.lstrip().lower().startswith(_URL_SCHEMES):
            raise OpenAIError(422, f"{where}: {item[:80]!r} is a URL, and this server fetches nothing; send the "
                                   "image itself as a data URI (data:image/png;base64,...), or set "
                                   '"modality": "text" to embed the string as text', param="input")
        if body.modality == "image" or (body.modality is None and item.startswith(_IMAGE_DATA_URI)):
            images[index] = _image_bytes(item, where, settings)
        else:
            if len(item) > settings.max_text_chars:
                raise OpenAIError(422, f"{where}: {len(item)} characters, more than "
                                       f"--max-text-chars={settings.max_text_chars}", param="input")
            texts[index] = item
    return texts, images


def _image_bytes(item: str, where: str, settings: ServerSettings) -> bytes:
    """The bytes of an image given as a data URI (``data:image/png;base64,...``) or as bare base64."""
    text = item
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise OpenAIError(422, f"{where}: a data URI without base64 data; send data:image/png;base64,<base64>",
                              param="input")
    text = "".join(text.split())
    size = len(text) * 3 // 4
    if size > settings.max_image_bytes:
        raise OpenAIError(422, f"{where}: about {size} bytes, more than --max-image-bytes="
                               f"{settings.max_image_bytes}", param="input")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise OpenAIError(422, f"{where}: not valid base64 ({err})", param="input") from None


def encode_row(row: np.ndarray, encoding_format: str) -> np.ndarray | str:
    """A unit row as OpenAI sends it: the float32 array (written as JSON numbers), or base64 of its float32
    little-endian bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
    return row


def model_created(embedder: Embedder) -> int:
    """Unix seconds of the bundle's export: the manifest's ``created``, else the manifest file's modification."""
    created = embedder.bundle.manifest.created
    if created:
        try:
            return int(datetime.fromisoformat(created).timestamp())
        except ValueError:
            pass
    return int(os.stat(embedder.bundle.path(MANIFEST)).st_mtime)


def add_openai_routes(app: FastAPI, service: EmbeddingService, arrival, while_connected, json_response) -> None:
    """Add ``POST /v1/embeddings`` and ``GET /v1/models`` to ``app`` (before its ServingMiddleware is built).

    arrival(request, kind), while_connected(request, work) and json_response(body) are the app's own helpers, so
    these endpoints batch, cancel and answer as the others do."""
    settings = service.settings

    @app.post("/v1/embeddings", responses={200: {"model": EmbeddingsResponse}})
    @submits_to("text", "image")
    async def create_embeddings(body: EmbeddingsRequest, request: Request):
        """OpenAI-compatible embeddings of texts and images (data URIs), L2-normalised, in input order."""
        embedder = service.require_ready()
        check_model(body.model, embedder)
        texts, images = split_items(body, settings)
        for kind, items in (("text", texts), ("image", images)):
            if not items and arrival(request, kind) is not None:
                arrival(request, kind).done()  # a batch of that kind need not wait for this request
        work = []
        if texts:
            work.append(service.embed_texts(list(texts.values()), arrival(request, "text")))
        if images:
            payloads = await service.limit_pixels(list(images.values()))
            work.append(service.embed_images(payloads, arrival(request, "image")))
        results = await while_connected(request, asyncio.gather(*work))
        rows: dict[int, np.ndarray] = {}
        tokens = 0
        if texts:
            text_rows: TextRows = results[0]
            rows.update(zip(texts, text_rows.features, strict=True))
            tokens = sum(text_rows.tokens)
        if images:
            image_rows, errors = results[-1]
            indices = list(images)
            if errors:
                first = errors[0]
                raise OpenAIError(422, f"input[{indices[first['index']]}]: {first['error']}", param="input")
            rows.update(zip(indices, image_rows, strict=True))
        for index in sorted(rows):
            if not np.isfinite(rows[index]).all():
                raise OpenAIError(500, f"input[{index}]: the model's output holds NaN or Inf; it is not answered as "
                                       "numbers (counted in ruclip_tiny_nonfinite_outputs_total; see /readyz for the "
                                       "self-test)", code="nonfinite_output")
        ordered = l2_normalize(np.stack([rows[index] for index in sorted(rows)]))
        data = [{"object": "embedding", "index": index, "embedding": encode_row(row, body.encoding_format)}
                for index, row in zip(sorted(rows), ordered, strict=True)]
        return json_response({"object": "list", "data": data, "model": body.model,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    @app.get("/v1/models")
    async def list_models():
        """OpenAI-compatible: the one model served."""
        embedder = service.require_ready()
        return {"object": "list", "data": [{"id": embedder.bundle.manifest.model_id, "object": "model",
                                            "created": model_created(embedder), "owned_by": OWNED_BY}]}
