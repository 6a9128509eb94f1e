"""``Embedder`` input limits: the pixel limit read from an image's header before decoding, and the label template
checked before anything runs."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from ruclip_tiny.template import TemplateError
from ruclip_tiny.transform import DEFAULT_MAX_IMAGE_PIXELS
from runtime.embedder import Embedder
from tests.runtime.fake_bundle import build_fake_bundle


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 160, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG header for ``width`` x ``height`` with its pixel data cut off: only a header check can name its size."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return b"\x89PNG\r\n\x1a\n" + ihdr + struct.pack(">I", 1000) + b"IDAT" + b"\x78\x9c" + b"\x00" * 40


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_fake_bundle(tmp_path_factory.mktemp("embedder-limits") / "bundle")


def test_an_image_over_max_image_pixels_is_a_failure_named_after_the_limit(bundle, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(png(400, 300))
    with Embedder.load(bundle, backend="onnxruntime", max_image_pixels=100_000) as embedder:
        result = embedder.encode_images_partial([png(64, 64), big, png_header_only(9000, 9000), png(300, 300)])
    assert result.ok_indices == [0, 3]
    reasons = {index: reason for index, _, reason in result.failures}
    assert sorted(reasons) == [1, 2]
    assert "400x300 = 120000 pixels" in reasons[1] and "--max-image-pixels" in reasons[1]
    # 81 M pixels by its header, under Pillow's own limit: refused by size, never decoded (it would be "truncated")
    assert "9000x9000" in reasons[2] and "truncated" not in reasons[2]


def test_the_default_limit_refuses_a_pixel_bomb_and_none_leaves_only_pillows(bundle):
    bomb = png_header_only(7800, 7800)  # 60.8 M pixels: just over the default
    with Embedder.load(bundle, backend="onnxruntime") as embedder:
        assert embedder.max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS == 60_000_000
        (_, _, reason), = embedder.encode_images_partial([bomb]).failures
    assert "max_image_pixels" in reason
    with Embedder.load(bundle, backend="onnxruntime", max_image_pixels=None) as embedder:
        (_, _, reason), = embedder.encode_images_partial([bomb]).failures
    assert "truncated" in reason  # decoded, and found cut off


@pytest.mark.parametrize("template", ["no slot", "{0}", "{:>20000000}", "{} {}", "{"])
def test_classify_refuses_a_bad_template_before_anything_runs(bundle, tmp_path, template):
    missing = tmp_path / "missing.png"  # decoding it would fail first if the template were checked later
    with Embedder.load(bundle, backend="onnxruntime") as embedder:
        with pytest.raises(TemplateError, match="template"):
            embedder.classify([missing], ["слово1", "слово2"], template=template)
