"""Tests of ruclip_tiny.transform (the original preprocessing, torch-free) and ruclip_tiny.demo.

Expected values are derived by hand here (torchvision's rounding rules written out, float32 arithmetic
done step by step), never by calling the code under test a second way. The bit-for-bit comparison with
real torchvision on tests/legacy_cases.py lives in the expectation test, not here.
"""

from __future__ import annotations

import io
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ruclip_tiny.demo import DEMO_DIR, demo_labels, demo_photos
from ruclip_tiny.errors import ImageDecodeError
from ruclip_tiny.spec import IMAGE_MEAN, IMAGE_SIZE, IMAGE_STD
from ruclip_tiny.transform import (
    ImageTransform,
    center_crop,
    center_crop_box,
    image_transform,
    load_image,
    preprocess,
    resized_size,
)
from tests.legacy_cases import image_cases

REPO_ROOT = Path(__file__).resolve().parents[2]


def normalized(value: int, channel: int) -> np.float32:
    """What ToTensor + Normalize make of one 8-bit value, in float32 step by step as torch does it."""
    x = np.float32(value) / np.float32(255)
    return (x - np.float32(IMAGE_MEAN[channel])) / np.float32(IMAGE_STD[channel])


def normalized_rgb(rgb: tuple[int, int, int]) -> np.ndarray:
    """float32 [3]: the per-channel output for one RGB colour."""
    return np.array([normalized(v, c) for c, v in enumerate(rgb)], dtype=np.float32)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Invert Normalize + ToTensor (float32 [3, H, W] -> uint8 [H, W, 3]); exact after rounding."""
    mean = np.asarray(IMAGE_MEAN, dtype=np.float64)[:, None, None]
    std = np.asarray(IMAGE_STD, dtype=np.float64)[:, None, None]
    return np.rint((pixels.astype(np.float64) * std + mean) * 255).astype(np.uint8).transpose(1, 2, 0)


def column_index_image(width: int, height: int) -> Image.Image:
    """L image whose pixel value is its column index (width <= 256), to read crop offsets off the output."""
    row = np.arange(width, dtype=np.uint8)
    return Image.fromarray(np.broadcast_to(row, (height, width)).copy())


def encoded(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def noisy_rgb(width: int = 200, height: int = 160) -> Image.Image:
    """Incompressible content, so that cutting the encoded file really loses pixel data."""
    values = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(values)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def grey_png(width: int, height: int, rows: bytes | None = None) -> bytes:
    """A minimal 8-bit greyscale PNG whose header claims width x height; pixel data is tiny (or ``rows``)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = rows if rows is not None else b"\x00" * 16
    chunks = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(data)) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


# --------------------------------------------------------------------------------------------------------
# Output contract


@pytest.mark.parametrize("size", [(640, 480), (224, 224), (50, 37), (1, 300)])
def test_output_is_contiguous_float32_chw(size):
    pixels = image_transform()(Image.new("RGB", size, (10, 20, 30)))
    assert pixels.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert pixels.dtype == np.float32
    assert pixels.flags.c_contiguous


@pytest.mark.parametrize("mode, colour", [("RGB", (128, 128, 128)), ("L", 128), ("RGBA", (128, 128, 128, 255))])
def test_uniform_grey_128_gives_exact_normalized_value(mode, colour):
    pixels = image_transform()(Image.new(mode, (300, 260), colour))
    for channel in range(3):
        assert np.all(pixels[channel] == normalized(128, channel)), channel


def test_uniform_colour_keeps_channel_order():
    pixels = image_transform()(Image.new("RGB", (250, 400), (10, 128, 250)))
    expected = normalized_rgb((10, 128, 250))
    assert np.array_equal(pixels[:, 100, 100], expected)
    assert np.array_equal(pixels, np.broadcast_to(expected[:, None, None], pixels.shape))


def test_image_transform_is_picklable_and_says_what_it_does():
    transform = pickle.loads(pickle.dumps(image_transform()))
    assert isinstance(transform, ImageTransform)
    assert "CenterCrop(224)" in repr(transform)


def test_non_image_input_is_a_type_error():
    with pytest.raises(TypeError, match="load_image"):
        image_transform()(np.zeros((224, 224, 3), dtype=np.uint8))


# --------------------------------------------------------------------------------------------------------
# torchvision's rounding rules, worked out by hand


@pytest.mark.parametrize(
    "size, expected",
    [
        ((640, 480), (298, 224)),  # 224 * 640 / 480 = 298.67 -> truncated, not rounded to 299
        ((480, 640), (224, 298)),
        ((50, 37), (302, 224)),  # 302.70 -> 302
        ((223, 224), (224, 225)),  # 225.004 -> 225
        ((1999, 1501), (298, 224)),  # 298.32
        ((1, 300), (224, 67200)),
        ((300, 1), (67200, 224)),
        ((224, 300), (224, 300)),  # short side already 224
        ((454, 448), (227, 224)),  # exactly 227.0
        ((500, 500), (224, 224)),
    ],
)
def test_resized_size_truncates_the_long_side(size, expected):
    assert resized_size(*size) == expected


@pytest.mark.parametrize(
    "size, left_top",
    [
        ((224, 224), (0, 0)),
        ((225, 224), (0, 0)),  # round(0.5) = 0: half to even
        ((226, 224), (1, 0)),
        ((227, 224), (2, 0)),  # round(1.5) = 2
        ((229, 224), (2, 0)),  # round(2.5) = 2, not 3
        ((224, 225), (0, 0)),  # rows too: round(0.5) = 0
        ((224, 231), (0, 4)),  # round(3.5) = 4
        ((298, 224), (37, 0)),
        ((224, 300), (0, 38)),
    ],
)
def test_center_crop_offsets_round_half_to_even(size, left_top):
    left, top = left_top
    assert center_crop_box(*size) == (left, top, left + IMAGE_SIZE, top + IMAGE_SIZE)


@pytest.mark.parametrize("width, first_column", [(224, 0), (225, 0), (226, 1), (227, 2), (229, 2), (231, 4)])
def test_crop_offset_shows_in_the_output_pixels(width, first_column):
    # Height 224 means no resize, so the output's first column is exactly the image column at the offset.
    pixels = image_transform()(column_index_image(width, 224))
    assert pixels[0, 0, 0] == normalized(first_column, 0)
    assert pixels[0, 0, -1] == normalized(first_column + IMAGE_SIZE - 1, 0)


@pytest.mark.parametrize("height, first_row", [(225, 0), (226, 1), (229, 2)])
def test_vertical_crop_offset_shows_in_the_output_pixels(height, first_row):
    pixels = image_transform()(column_index_image(height, 224).transpose(Image.Transpose.TRANSPOSE))
    assert pixels[0, 0, 0] == normalized(first_row, 0)
    assert pixels[0, -1, 0] == normalized(first_row + IMAGE_SIZE - 1, 0)


def test_resize_is_pillow_bilinear_with_its_antialiasing_triangle():
    # Columns 0,0,255,255,... halved to 224: Pillow's BILINEAR widens the triangle filter to 2 source px,
    # so output column i weighs source columns 2i-1..2i+2 by 1/8, 3/8, 3/8, 1/8:
    # even i -> (255 + 255) / 8 = 63.75 -> 64, odd i -> 3/4 * 255 = 191.25 -> 191 (bicubic gives 40/215).
    row = np.where((np.arange(448) // 2) % 2 == 1, 255, 0).astype(np.uint8)
    pixels = image_transform()(Image.fromarray(np.broadcast_to(row, (448, 448)).copy()))
    interior = pixels[0, 100, 2:222]
    assert np.all(interior[0::2] == normalized(64, 0))
    assert np.all(interior[1::2] == normalized(191, 0))


def test_small_image_is_upsampled_not_padded():
    # 50x37 -> 302x224 by bilinear upsampling: a uniform image stays uniform (zero padding would show 0s).
    pixels = image_transform()(Image.new("RGB", (50, 37), (200, 100, 50)))
    assert np.array_equal(pixels, np.broadcast_to(normalized_rgb((200, 100, 50))[:, None, None], pixels.shape))


def test_center_crop_pads_a_smaller_image_with_zeros():
    # 101x51 in a 224 crop: pads of 123 and 173 split as left 61 / right 62 and top 86 / bottom 87.
    cropped = center_crop(Image.new("L", (101, 51), 255), 224)
    values = np.asarray(cropped)
    assert values.shape == (224, 224)
    assert values[86:137, 61:162].min() == 255
    assert values.sum() == 255 * 101 * 51  # everything else is 0
    assert values[85, 100] == 0 and values[137, 100] == 0 and values[100, 60] == 0 and values[100, 162] == 0


def test_center_crop_padding_keeps_the_palette():
    image = Image.new("P", (10, 300), 3)
    palette = [0, 0, 0] * 3 + [250, 10, 20] + [0, 0, 0] * 252
    image.putpalette(palette)
    cropped = center_crop(image, 224)
    assert cropped.mode == "P" and cropped.size == (224, 224)
    assert cropped.getpalette()[9:12] == [250, 10, 20]
    assert cropped.convert("RGB").getpixel((107, 0)) == (250, 10, 20)
    assert cropped.convert("RGB").getpixel((0, 0)) == (0, 0, 0)


# --------------------------------------------------------------------------------------------------------
# Resizing in the image's own mode, before convert("RGB")


def test_palette_image_is_resized_nearest_so_only_palette_colours_appear():
    indices = np.random.default_rng(1).integers(0, 4, (600, 500), dtype=np.uint8)
    image = Image.fromarray(indices, mode="L").convert("P")  # L values 0..3 -> indices 0..3
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0] + [0, 0, 0] * 252)
    colours = {tuple(c) for c in to_uint8(image_transform()(image)).reshape(-1, 3).tolist()}
    assert colours <= {(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)}
    # The same pixels as RGB are resized bilinearly and blend into new colours.
    blended = {tuple(c) for c in to_uint8(image_transform()(image.convert("RGB"))).reshape(-1, 3).tolist()}
    assert len(blended) > 4


def test_bilevel_image_stays_black_and_white():
    bits = np.random.default_rng(2).integers(0, 2, (500, 450), dtype=np.uint8).astype(bool)
    values = set(to_uint8(image_transform()(Image.fromarray(bits))).reshape(-1).tolist())
    assert values <= {0, 255}


def test_fully_transparent_la_resizes_to_black_but_unresized_keeps_its_grey():
    # Pillow resizes LA premultiplied by alpha, so the grey under alpha 0 vanishes; without a resize
    # convert("RGB") just drops alpha. Both are what the original pipeline did.
    transparent_grey = Image.new("LA", (448, 448), (200, 0))
    assert np.all(image_transform()(transparent_grey)[1] == normalized(0, 1))
    unresized = Image.new("LA", (224, 224), (200, 0))
    assert np.all(image_transform()(unresized)[1] == normalized(200, 1))


@pytest.mark.parametrize("value, expected", [(100, 100), (255, 255), (1000, 255), (65535, 255)])
def test_16_bit_values_are_clipped_not_rescaled(value, expected):
    image = Image.frombytes("I;16", (300, 240), np.full((240, 300), value, dtype="<u2").tobytes())
    pixels = image_transform()(image)
    assert np.all(pixels[2] == normalized(expected, 2))


def test_strip_too_thin_to_resize_within_the_pixel_limit_is_refused():
    # 1x2000 -> 224x448000 = 100.4M px before the crop, above Pillow's default 89.5M limit.
    with pytest.raises(ImageDecodeError, match=r"1x2000 px.*aspect ratio.*224x448000"):
        image_transform()(Image.new("L", (1, 2000)))


def test_strip_within_the_pixel_limit_is_processed():
    # 1x300 -> 224x67200: large but allowed; uniform stays uniform.
    pixels = image_transform()(Image.new("L", (1, 300), 77))
    assert np.all(pixels[0] == normalized(77, 0))


def test_mode_pillow_cannot_convert_to_rgb_is_a_clear_error():
    with pytest.raises(ImageDecodeError, match="'La'.*convert"):
        image_transform()(Image.frombytes("La", (240, 240), bytes(240 * 240 * 2)))


# Pillow warns when converting a P image whose tRNS is a byte string; the original pipeline got it too.
@pytest.mark.filterwarnings("ignore:Palette images with Transparency expressed in bytes")
def test_every_legacy_case_transforms_to_finite_values():
    cases = image_cases()
    assert {image.mode for image in cases.values()} >= {"RGB", "L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1"}
    transform = image_transform()
    for name, image in cases.items():
        pixels = transform(image)
        assert pixels.shape == (3, 224, 224) and np.isfinite(pixels).all(), name


# --------------------------------------------------------------------------------------------------------
# Decoding: sources


@pytest.fixture
def photo_file(tmp_path):
    path = tmp_path / "photo.png"
    noisy_rgb().save(path)
    return path


def test_path_str_bytes_and_file_objects_decode_to_the_same_pixels(photo_file):
    expected = np.asarray(Image.open(photo_file).convert("RGB"))
    data = photo_file.read_bytes()
    with open(photo_file, "rb") as handle:
        from_handle = load_image(handle)
    sources = [photo_file, str(photo_file), data, bytearray(data), memoryview(data), io.BytesIO(data)]
    for image in [load_image(s) for s in sources] + [from_handle]:
        assert image.mode == "RGB" and image.size == (200, 160)
        assert np.array_equal(np.asarray(image), expected)


def test_loaded_image_keeps_its_own_mode(tmp_path):
    path = tmp_path / "palette.gif"
    Image.new("P", (30, 20), 5).save(path)
    assert load_image(path).mode == "P"


def test_exif_orientation_is_not_applied():
    # Left half red, right half blue, tagged "rotate 90° CW" (orientation 6).
    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste((0, 0, 255), (32, 0, 64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    loaded = load_image(encoded(image, "PNG", exif=exif))
    assert loaded.getexif().get(0x0112) == 6  # the tag is there ...
    assert loaded.size == (64, 32)  # ... and ignored: not transposed to 32x64
    assert loaded.getpixel((0, 16)) == (255, 0, 0) and loaded.getpixel((63, 16)) == (0, 0, 255)


# --------------------------------------------------------------------------------------------------------
# Decoding: every failure names the file and says what is wrong


def test_missing_file(tmp_path):
    path = tmp_path / "missing.jpg"
    with pytest.raises(ImageDecodeError, match="not found") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageDecodeError, match="directory") as info:
        load_image(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty") as info:
        load_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path, fmt):
    data = encoded(noisy_rgb(), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="truncated") as info:
        load_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "content",
    [
        np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "привет, это не картинка\n".encode(),
    ],
    ids=["random-bytes", "text"],
)
def test_not_an_image(tmp_path, content):
    path = tmp_path / "notes.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match="not an image") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_decompression_bomb_is_refused_without_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(grey_png(100_000, 100_000))  # header claims 10^10 pixels; the file is ~100 bytes
    with pytest.raises(ImageDecodeError, match="decompression bomb") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_image_pillow_would_only_warn_about_is_refused_too(monkeypatch):
    # 40x40 = 1600 px, above a limit of 1000 but below the 2000 where Pillow itself raises.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow's own warning still fires; we raise anyway
        with pytest.raises(ImageDecodeError, match="decompression bomb.*40x40") as info:
            load_image(grey_png(40, 40, rows=b"\x00" * (41 * 40)), name="upload #7")
    assert str(info.value).startswith("upload #7:")


def test_a_small_image_under_the_limit_loads(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1600)
    assert load_image(grey_png(40, 40, rows=b"\x00" * (41 * 40))).size == (40, 40)


def test_bytes_and_file_objects_are_named_in_errors(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"^<bytes>: file is empty"):
        load_image(b"")
    with pytest.raises(ImageDecodeError, match=r"^images\[3\]: not an image"):
        load_image(b"GIF? no", name="images[3]")
    path = tmp_path / "junk.png"
    path.write_bytes(b"junk" * 10)
    with open(path, "rb") as handle, pytest.raises(ImageDecodeError) as info:
        load_image(handle)
    assert str(info.value).startswith(f"{path}: not an image")


def test_text_mode_file_object_is_a_type_error(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("x")
    with open(path, encoding="utf-8") as handle, pytest.raises(TypeError, match="binary"):
        load_image(handle)


# --------------------------------------------------------------------------------------------------------
# Batches


def test_preprocess_stacks_images_and_sources(photo_file):
    grey = Image.new("L", (300, 300), 128)
    batch = preprocess([grey, photo_file, photo_file.read_bytes()])
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == np.float32 and batch.flags.c_contiguous
    assert np.all(batch[0, 0] == normalized(128, 0))
    assert np.array_equal(batch[1], batch[2])
    assert not np.array_equal(batch[0], batch[1])


def test_preprocess_of_nothing_is_an_empty_batch():
    assert preprocess([]).shape == (0, 3, 224, 224)


def test_preprocess_names_the_failing_item(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"^images\[1\]: not an image"):
        preprocess([Image.new("RGB", (224, 224)), b"not an image at all"])
    missing = tmp_path / "gone.jpg"
    with pytest.raises(ImageDecodeError, match="gone.jpg: file not found"):
        preprocess([missing])


# --------------------------------------------------------------------------------------------------------
# Demo photos


def test_demo_photos_are_real_small_jpegs_with_labels():
    photos = demo_photos()
    labels, distractors = demo_labels()
    assert [p.name for p in photos] == sorted(labels)
    assert 4 <= len(photos) <= 6
    assert {"кошка", "ракета", "кофе", "астронавт"} <= set(labels.values())
    assert distractors and not set(distractors) & set(labels.values())
    assert sum(p.stat().st_size for p in photos) < 400 * 1024
    for path in photos:
        image = load_image(path)
        assert image.format == "JPEG" and max(image.size) <= 512, path.name
        assert image_transform()(image).shape == (3, 224, 224)
    readme = (DEMO_DIR / "README.md").read_text(encoding="utf-8")
    for path in photos:  # each photo has its row of origin, credit and licence
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{path.name}`"))
        assert "skimage.data." in row and ("CC0" in row or "public domain" in row or "copyright" in row), row


# --------------------------------------------------------------------------------------------------------
# Torch-free


def test_transform_and_demo_import_without_torch():
    code = (
        "import sys, ruclip_tiny.transform, ruclip_tiny.demo; "
        "heavy = sorted(m for m in ('torch', 'torchvision') if m in sys.modules); "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
