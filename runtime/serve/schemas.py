"""The request and response bodies of the HTTP API (pydantic models: validation and the OpenAPI schema)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def unicode_text(text: str) -> str:
    """``text`` unless it holds a lone surrogate: JSON's ``"\ud800"`` decodes to one, and it is not text (it
    cannot be encoded, tokenized or echoed back)."""
    if not text.isascii():  # O(1) in CPython: base64 images skip the scan
        found = _LONE_SURROGATE.search(text)
        if found:
            raise ValueError(f"holds a lone surrogate (U+{ord(found.group()):04X} at character {found.start()}), "
                             "which is not text; send valid Unicode (a \\uD800-\\uDFFF escape only as half of a pair)")
    return text


Text = Annotated[str, AfterValidator(unicode_text)]


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


IMAGE_BODY = {
    # the image endpoint reads its body itself (JSON or multipart): FastAPI cannot derive this from a signature
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
