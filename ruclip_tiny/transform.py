"""Image decoding and the original model's preprocessing, reproduced bit for bit with Pillow and numpy.

The checkpoint was trained and published with this torchvision pipeline, applied to the image exactly as
``PIL.Image.open`` returned it::

    Compose([Resize(224), CenterCrop(224), lambda im: im.convert("RGB"), ToTensor(),
             Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))])

Torch-free on purpose (the runtime reuses it), so torchvision's PIL code path is re-stated here step by
step. What makes it exact rather than close:

- Resize and crop happen in the image's OWN mode, before the conversion to RGB. Pillow then resizes
  "1" and "P" with NEAREST whatever is asked, "LA"/"RGBA" with premultiplied alpha, "I;16"/"I"/"F" at
  their own depth; all of that is Pillow's, so calling the same Pillow methods in the same order gives
  the same pixels. The one consequence worth knowing: 16- and 32-bit images ("I;16", "I", "F") are
  clipped to 0..255 by ``convert("RGB")``, not rescaled; a 16-bit PNG comes out mostly white, as it did
  for the original model.
- Sizes and offsets use torchvision's integer rules, not "nicer" ones: the long side becomes
  ``int(224 * long / short)`` (truncation), the resize is skipped when the size already matches, and the
  crop offset is ``int(round((h - 224) / 2.0))`` (Python's round: half to even, so 0.5 -> 0, 2.5 -> 2).
- ToTensor and Normalize are float32 ops, done in the same order: ``x / 255`` then ``(x - mean) / std``.
  ToTensor's special cases for modes "I", "I;16", "F" and "1" are never reached, because the lambda
  has already made every image an 8-bit RGB one.

EXIF orientation is deliberately NOT applied: the original pipeline never called ``ImageOps.exif_transpose``,
so a phone photo tagged "rotate 90°" was embedded as stored, and so it is here.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ruclip_tiny.errors import ImageDecodeError
from ruclip_tiny.spec import IMAGE_MEAN, IMAGE_SIZE, IMAGE_STD

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO
"""What ``load_image`` accepts: a path, the encoded bytes, or a binary file object."""

DEFAULT_MAX_IMAGE_PIXELS = 60_000_000
"""The runtime's default limit on one image's pixels (``--max-image-pixels``): a 48 MP phone photo passes; a
9400x9400 PNG of 280 KB, which costs 265 MB and 1.5 s of CPU to decode, does not."""

_MEAN = np.asarray(IMAGE_MEAN, dtype=np.float32)[:, None, None]
_STD = np.asarray(IMAGE_STD, dtype=np.float32)[:, None, None]


# ---------------------------------------------------------------------------------------------------------
# Geometry: torchvision's Resize(int) and CenterCrop(int) on a PIL image


def resized_size(width: int, height: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """(width, height) that torchvision's ``Resize(size)`` gives an image of this size: the short side
    becomes ``size`` and the long side ``int(size * long / short)`` (truncated, computed in that order)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def resize_short_side(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """torchvision ``Resize(size)`` with BILINEAR on a PIL image, in the image's own mode.

    The image itself is returned untouched when the size already matches (torchvision skips the call).
    """
    new_size = resized_size(image.width, image.height, size)
    if new_size == image.size:
        return image
    return image.resize(new_size, Image.Resampling.BILINEAR)


def center_crop_box(width: int, height: int, size: int = IMAGE_SIZE) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision's ``CenterCrop(size)`` on an image at least ``size`` on
    both sides; ``round`` is Python's half-to-even, so an odd 1-pixel surplus crops from offset 0."""
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return left, top, left + size, top + size


def _pad_with_zeros(image: Image.Image, left: int, top: int, right: int, bottom: int) -> Image.Image:
    """torchvision's ``pad(img, [l, t, r, b], fill=0)`` on PIL: zeros in every band, palette kept for "P"."""
    bands = len(image.getbands())
    fill: int | float | tuple[int, ...] = 0.0 if image.mode == "F" else 0
    if bands > 1:
        fill = (0,) * bands
    padded = ImageOps.expand(image, border=(left, top, right, bottom), fill=fill)
    if image.mode == "P":
        palette = image.getpalette()
        if palette is not None:
            padded.putpalette(palette)
    return padded


def center_crop(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """torchvision ``CenterCrop(size)`` on a PIL image, in the image's own mode.

    An image smaller than ``size`` on a side is first padded with zeros (the extra pixel of an odd
    padding goes right/bottom), as torchvision does; after ``resize_short_side`` that never happens.
    """
    width, height = image.size
    if size > width or size > height:
        pad_x = max(size - width, 0)
        pad_y = max(size - height, 0)
        image = _pad_with_zeros(image, pad_x // 2, pad_y // 2, (pad_x + 1) // 2, (pad_y + 1) // 2)
        width, height = image.size
        if (width, height) == (size, size):
            return image
    return image.crop(center_crop_box(width, height, size))


# ---------------------------------------------------------------------------------------------------------
# Pixels: convert("RGB"), ToTensor, Normalize


def to_rgb(image: Image.Image) -> Image.Image:
    """``image.convert("RGB")``, with a clear error for the few modes Pillow cannot convert (e.g. "La"),
    where the original pipeline failed as well."""
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise ImageDecodeError(
            f"cannot preprocess an image in PIL mode {image.mode!r}: Pillow cannot convert it to RGB "
            f"({err}), and neither could the original torchvision pipeline; convert it to a standard "
            f"mode such as 'RGBA' or 'RGB' first"
        ) from err


def normalize(rgb: Image.Image) -> np.ndarray:
    """torchvision ``ToTensor()`` + ``Normalize(IMAGE_MEAN, IMAGE_STD)`` of an RGB image.

    Returns: float32 [3, H, W], C-contiguous. Same float32 operations in the same order as torch
    (``x / 255``, then ``(x - mean) / std``), so the result is bit-identical, not merely close.
    """
    if rgb.mode != "RGB":
        raise ValueError(f"normalize expects an RGB image, got mode {rgb.mode!r}")
    chw = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))
    pixels = chw.astype(np.float32)
    pixels /= np.float32(255)
    pixels -= _MEAN
    pixels /= _STD
    return pixels


def _check_resized_pixel_count(image: Image.Image, size: int) -> None:
    """Refuse images whose resized intermediate would exceed ``PIL.Image.MAX_IMAGE_PIXELS``.

    Resizing the SHORT side to 224 blows a thin strip up: 1x2000 px becomes 224x448000 before the crop
    (a 1x100000 upload would need 22 GB). Only aspect ratios beyond ~1780:1 reach the default limit; for
    everything else the output is the original pipeline's, bit for bit. Resizing just the cropped window
    instead would not be bit-identical (Pillow's filter positions would be recomputed from a new box).
    """
    limit = Image.MAX_IMAGE_PIXELS
    width, height = resized_size(image.width, image.height, size)
    if limit is not None and width * height > limit:
        raise ImageDecodeError(
            f"image of {image.width}x{image.height} px has too extreme an aspect ratio: the original "
            f"preprocessing resizes it to {width}x{height} = {width * height} px before cropping, above "
            f"Pillow's limit of {limit} (PIL.Image.MAX_IMAGE_PIXELS); crop it to a sensible shape first"
        )


class ImageTransform:
    """The original preprocessing as a callable: ``PIL.Image`` (any mode) -> float32 [3, 224, 224].

    A class rather than a closure so it pickles (data-loader workers) and prints what it is.
    """

    size: int = IMAGE_SIZE

    def __call__(self, image: Image.Image) -> np.ndarray:
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}; decode it with load_image")
        _check_resized_pixel_count(image, self.size)
        image = resize_short_side(image, self.size)
        image = center_crop(image, self.size)
        return normalize(to_rgb(image))

    def __repr__(self) -> str:
        return (
            f"ImageTransform(Resize({self.size}, BILINEAR) in own mode, CenterCrop({self.size}), "
            f"convert('RGB'), ToTensor, Normalize(mean={IMAGE_MEAN}, std={IMAGE_STD}))"
        )


def image_transform() -> Callable[[Image.Image], np.ndarray]:
    """The callable ``PIL.Image -> float32 [3, 224, 224]`` equal to the original torchvision preprocessing."""
    return ImageTransform()


# ---------------------------------------------------------------------------------------------------------
# Decoding


def _describe(source: object, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    file_name = getattr(source, "name", None)
    return file_name if isinstance(file_name, str) else "<file object>"


def _read_source(source: ImageSource, label: str) -> bytes:
    """The encoded bytes of ``source``; reading a path fully up front means no file handle stays open
    behind a multi-frame image (GIF, TIFF) and a file object need not be seekable."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ImageDecodeError(f"{label}: file not found") from None
        except IsADirectoryError:
            raise ImageDecodeError(f"{label}: is a directory, not an image file") from None
        except OSError as err:
            raise ImageDecodeError(f"{label}: cannot read the file ({err.strerror or err})") from err
    read = getattr(source, "read", None)
    if read is None:
        raise TypeError(
            f"image source must be a path, bytes or a binary file object, got {type(source).__name__}"
        )
    try:
        data = read()
    except OSError as err:
        raise ImageDecodeError(f"{label}: cannot read the file object ({err})") from err
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"{label}: file object returned {type(data).__name__}; open it in binary mode ('rb')")
    return bytes(data)


def _check_pixel_count(image: Image.Image, label: str) -> None:
    """Reject what Pillow would only warn about (more than MAX_IMAGE_PIXELS, up to twice that).

    Checked by hand rather than by turning DecompressionBombWarning into an error with
    ``warnings.catch_warnings``: that swaps the process-wide filter list and is not thread-safe in a server.
    (Pillow still emits its own warning first, under the default warning filters.)
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return
    width, height = image.size
    pixels = max(1, width) * max(1, height)
    if pixels > limit:
        raise ImageDecodeError(
            f"{label}: decompression bomb refused: {width}x{height} = {pixels} pixels is above Pillow's "
            f"limit of {limit} (PIL.Image.MAX_IMAGE_PIXELS); raise that limit only for trusted files"
        )


def _check_pixel_limit(image: Image.Image, label: str, max_pixels: int | None) -> None:
    """Refuse an image over the caller's own limit, from its header (``Image.open`` has not decoded it yet)."""
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(
            f"{label}: {width}x{height} = {width * height} pixels, more than the limit of {max_pixels} "
            "(max_image_pixels; CLI: --max-image-pixels); downscale it first "
            f"(the model sees {IMAGE_SIZE}x{IMAGE_SIZE})"
        )


def image_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of encoded image bytes, read from the header without decoding the pixels; None when Pillow
    cannot read the header (``load_image`` then says why)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        return None


def _broken_image(label: str, err: Exception) -> ImageDecodeError:
    """The error for a file Pillow recognised but could not decode. Pillow names truncation in most
    formats ("image file is truncated", "Truncated File Read"), not in all (WebP: "could not create
    decoder object"), hence "corrupt or truncated" when it does not say."""
    what = "truncated" if "truncat" in str(err).lower() or isinstance(err, EOFError) else "corrupt or truncated"
    return ImageDecodeError(f"{label}: image is {what} and cannot be decoded ({type(err).__name__}: {err})")


def load_image(source: ImageSource, name: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """Decode ``source`` (path, bytes or binary file object) into a fully loaded ``PIL.Image``.

    The image keeps the mode its file gives it (the preprocessing depends on it) and its EXIF orientation
    is NOT applied (the original model never applied it). ``name`` labels the image in error messages
    (default: the path, the file object's name, or "<bytes>"); a caller with a batch passes e.g. "images[3]".
    ``max_pixels``: refuse an image with more pixels (width x height, from its header, before decoding).

    Raises ImageDecodeError naming the image for: a missing or unreadable file, 0 bytes, data that is not
    an image, a truncated or corrupt image, an image above ``max_pixels`` or ``PIL.Image.MAX_IMAGE_PIXELS``.
    Truncation is caught through Pillow, so not if the process set ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``.
    """
    label = _describe(source, name)
    data = _read_source(source, label)
    if not data:
        raise ImageDecodeError(f"{label}: file is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"{label}: decompression bomb refused: {err}") from err
    except Image.DecompressionBombWarning as err:  # raised only where the caller made warnings errors
        raise ImageDecodeError(f"{label}: decompression bomb refused: {err}") from err
    except UnidentifiedImageError as err:
        raise ImageDecodeError(
            f"{label}: not an image, or in a format Pillow cannot read ({len(data)} bytes)"
        ) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise _broken_image(label, err) from err
    _check_pixel_count(image, label)
    _check_pixel_limit(image, label, max_pixels)
    try:
        image.load()
    except Image.DecompressionBombError as err:  # some formats only learn their true size while decoding
        raise ImageDecodeError(f"{label}: decompression bomb refused: {err}") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise _broken_image(label, err) from err
    return image


def preprocess(images: Sequence[Image.Image | ImageSource]) -> np.ndarray:
    """Decode (where given as paths/bytes/files) and preprocess a batch.

    Returns: pixels: float32 [B, 3, 224, 224], C-contiguous; B = 0 gives an empty batch of that shape.
    Errors name the item: its path, or ``images[i]`` for bytes and file objects.
    """
    transform = image_transform()
    batch = np.empty((len(images), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for index, item in enumerate(images):
        if isinstance(item, Image.Image):
            image = item
        else:
            label = os.fsdecode(item) if isinstance(item, (str, os.PathLike)) else f"images[{index}]"
            image = load_image(item, name=label)
        try:
            batch[index] = transform(image)
        except ImageDecodeError as err:
            raise ImageDecodeError(f"images[{index}]: {err}") from err
    return batch
