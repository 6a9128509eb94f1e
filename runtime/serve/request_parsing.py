"""Reading request bodies within the limits: item counts, text lengths, base64 and multipart images, templates.

Anything over a limit is a 422 naming the limit (a 413 for a body over ``--max-body-bytes``); a single bad image is
not a request error: it becomes the reason its row fails.
"""

from __future__ import annotations

import base64
import binascii
import json
from contextlib import aclosing

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ruclip_tiny.template import TemplateError, fill_template
from runtime.serve.access import MULTIPART
from runtime.serve.schemas import ImageRequest, unicode_text
from runtime.serve.settings import ServerSettings


class BodyTooLarge(HTTPException):
    """413: the body is larger than ``--max-body-bytes`` (raised by the middleware while the body streams in)."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than --max-body-bytes={limit} bytes; send fewer or smaller items "
                              "per request")


def check_items(values: list, field: str, settings: ServerSettings) -> None:
    if len(values) > settings.max_items:
        raise HTTPException(422, f"{field}: {len(values)} items, more than --max-items={settings.max_items}; split "
                                 "the request")


def check_text_chars(texts: list[str], field: str, settings: ServerSettings) -> None:
    for index, text in enumerate(texts):
        if len(text) > settings.max_text_chars:
            raise HTTPException(422, f"{field}[{index}]: {len(text)} characters, more than "
                                     f"--max-text-chars={settings.max_text_chars}")


def _decoded_size(text: str) -> int:
    return len(text) * 3 // 4


def base64_payloads(images: list[str], settings: ServerSettings) -> list[bytes | str]:
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
        unicode_text(text)
    except ValueError as err:
        raise HTTPException(422, f"{where}: {err}") from None


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def image_request(request: Request, settings: ServerSettings) -> tuple[list[bytes | str], bool]:
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
            check_items(files, "images", settings)
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
    check_items(parsed.images, "images", settings)
    return base64_payloads(parsed.images, settings), parsed.normalize


def template_texts(template: str, labels: list[str], settings: ServerSettings) -> list[str]:
    """The text of each label; 422 for a template that is not one plain "{}", or for a text over --max-text-chars,
    found before any text is built (a format spec such as "{:>20000000}" would build 20 MB per label)."""
    try:
        return fill_template(template, labels, settings.max_text_chars, "--max-text-chars")
    except TemplateError as err:
        raise HTTPException(422, str(err)) from None
