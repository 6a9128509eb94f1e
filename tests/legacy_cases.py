"""Synthetic PIL images that exercise every branch of the original preprocessing (modes, sizes, rounding).

Shared by the tests and by the script that generates expectations with real torchvision in a side venv,
so it imports only numpy (1.x or 2.x) and Pillow, nothing from this project. Pixels come from integer
arithmetic only: transcendental functions may differ by an ulp between numpy builds, which would flip a
uint8 rounding and make the side venv's expectations describe a different image.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices, int64 [H, 1] and [1, W] (broadcast, never materialised as H*W twice)."""
    return np.arange(height, dtype=np.int64)[:, None], np.arange(width, dtype=np.int64)[None, :]


def _hash_noise(y: np.ndarray, x: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic per-pixel noise in 0..255, int64 [H, W]: an integer hash, identical on every platform."""
    h = (x * 73856093) ^ (y * 19349663) ^ (seed * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return (h >> 16) & 255


def _channel(height: int, width: int, seed: int) -> np.ndarray:
    """One 8-bit channel, uint8 [H, W]: a smooth gradient (its direction set by ``seed``) plus ramps, a fine
    checkerboard and hash noise, so that any difference in resampling or crop offset changes the result."""
    y, x = _grid(height, width)
    gx = (x * 255) // max(width - 1, 1)
    gy = (y * 255) // max(height - 1, 1)
    smooth = [gx, gy, 255 - gx, (gx + gy) // 2][seed % 4]
    ramps = ((x * (3 + seed) + y * (5 + 2 * seed)) % 64) * 4
    checker = ((x // 3 + y // 3 + seed) % 2) * 255
    noise = _hash_noise(y, x, seed)
    mixed = (smooth * 8 + ramps * 3 + checker * 2 + noise * 3) // 16
    return np.clip(mixed, 0, 255).astype(np.uint8)


def _planes(height: int, width: int, count: int, seed: int) -> np.ndarray:
    """``count`` interleaved channels, uint8 [H, W, count]."""
    return np.stack([_channel(height, width, seed + i) for i in range(count)], axis=-1)


def _from_planes(mode: str, planes: np.ndarray) -> Image.Image:
    height, width = planes.shape[:2]
    return Image.frombytes(mode, (width, height), np.ascontiguousarray(planes).tobytes())


def _palette(seed: int) -> list[int]:
    """A 256-entry RGB palette (768 ints) that is not a grey ramp, so index != colour."""
    index = np.arange(256, dtype=np.int64)
    r = (index * 37 + seed) % 256
    g = (index * 91 + 3 * seed) % 256
    b = 255 - index
    return np.stack([r, g, b], axis=-1).reshape(-1).tolist()


def _alpha(height: int, width: int) -> np.ndarray:
    """Alpha with fully transparent, fully opaque and partial regions, uint8 [H, W]: premultiplied
    resizing makes the colour under alpha 0 vanish, which only shows where alpha varies."""
    y, x = _grid(height, width)
    alpha = (x * 510) // max(width - 1, 1) - 128  # -128..382: clipped into 0 at left, 255 at right
    alpha = alpha + (((y // 7) % 3) - 1) * 60
    return np.clip(alpha, 0, 255).astype(np.uint8)


def _rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    return _from_planes("RGB", _planes(height, width, 3, seed))


def _grey(width: int, height: int, seed: int = 0) -> Image.Image:
    return _from_planes("L", _planes(height, width, 1, seed))


def _reopened_png(image: Image.Image) -> Image.Image:
    """The image as ``Image.open`` returns it after a PNG round trip (e.g. P with a tRNS chunk), decoded."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    reopened = Image.open(io.BytesIO(buffer.getvalue()))
    reopened.load()
    return reopened


def image_cases() -> dict[str, Image.Image]:
    """Name -> image: 24 deterministic synthetic images covering PIL modes, sizes and rounding cases.

    Names are ``<mode>_<W>x<H>[_what]``; comments give what each case forces torchvision to do.
    """
    cases: dict[str, Image.Image] = {}

    # --- RGB: geometry ---
    cases["rgb_640x480_landscape"] = _rgb(640, 480, seed=0)  # resize to 298x224, crop left 37
    cases["rgb_480x640_portrait"] = _rgb(480, 640, seed=1)  # resize to 224x298, crop top 37
    cases["rgb_224x224_exact"] = _rgb(224, 224, seed=2)  # no resize, no crop
    cases["rgb_224x300_resize_skipped"] = _rgb(224, 300, seed=3)  # short side already 224: crop top 38
    cases["rgb_229x224_half_even_2_5"] = _rgb(229, 224, seed=4)  # crop left round(2.5) = 2, not 3
    cases["rgb_227x224_half_even_1_5"] = _rgb(227, 224, seed=5)  # crop left round(1.5) = 2
    cases["rgb_454x448_resized_half_1_5"] = _rgb(454, 448, seed=6)  # resize to 227x224, crop left 2
    cases["rgb_50x37_small"] = _rgb(50, 37, seed=7)  # upsample to int(224*50/37) = 302 x 224, crop left 39
    cases["rgb_1999x1501_large"] = _rgb(1999, 1501, seed=8)  # resize to 298x224 (int truncation of 298.3)
    cases["rgb_333x1000_tall"] = _rgb(333, 1000, seed=9)  # resize to 224x672, crop top 224

    # --- L: geometry the RGB cases do not cover ---
    cases["l_223x224_half_even_0_5"] = _grey(223, 224, seed=1)  # resize to 224x225, crop top round(0.5) = 0
    cases["l_1x300_strip"] = _grey(1, 300, seed=2)  # resize to 224x67200, crop top 33488
    cases["l_300x1_strip"] = _grey(300, 1, seed=3)  # resize to 67200x224, crop left 33488
    cases["l_3000x200_wide"] = _grey(3000, 200, seed=0)  # resize to 3360x224, crop left 1568

    # --- other modes: each is resized in its own mode, then converted to RGB ---
    la = np.stack([_channel(333, 500, 4), _alpha(333, 500)], axis=-1)
    cases["la_500x333"] = _from_planes("LA", la)  # premultiplied-alpha resize, alpha dropped
    rgba = np.concatenate([_planes(500, 333, 3, 5), _alpha(500, 333)[..., None]], axis=-1)
    cases["rgba_333x500"] = _from_planes("RGBA", rgba)

    palette_image = _from_planes("P", _planes(300, 400, 1, 6)[..., 0])
    palette_image.putpalette(_palette(6))
    cases["p_400x300"] = palette_image  # resized with NEAREST whatever is asked

    transparent = _from_planes("P", _planes(400, 300, 1, 7)[..., 0])
    transparent.putpalette(_palette(7))
    transparent.info["transparency"] = bytes((i * 5) % 256 for i in range(256))
    cases["p_transparency_300x400"] = _reopened_png(transparent)  # P + tRNS, as Image.open gives it

    cases["cmyk_320x240"] = _from_planes("CMYK", _planes(240, 320, 4, 8))
    cases["ycbcr_240x320"] = _from_planes("YCbCr", _planes(320, 240, 3, 9))

    bilevel = _planes(230, 310, 1, 10)[..., 0] > 127
    cases["1_310x230"] = Image.frombytes("1", (310, 230), np.packbits(bilevel, axis=1).tobytes())

    # 16-bit: full 0..65535 span; convert("RGB") clips at 255, so mostly white, as it was for the original.
    y, x = _grid(260, 300)
    wide = (x * 65535) // 299 + ((y % 16) - 8) * 97 + _hash_noise(y, x, 11)
    wide = np.clip(wide, 0, 65535)
    wide[0, 0], wide[-1, -1] = 0, 65535
    cases["i16_300x260"] = Image.frombytes("I;16", (300, 260), wide.astype("<u2").tobytes())

    # 32-bit int and float: values below 0, inside 0..255 and above 255 (convert clips), fractional floats.
    y, x = _grid(300, 260)
    ints = (x * 400) // 259 - 72 + _hash_noise(y, x, 12) - 128 + (y % 5) * 3
    cases["i_260x300"] = Image.frombytes("I", (260, 300), ints.astype("<i4").tobytes())
    y, x = _grid(250, 250)
    floats = ((x * 1200) // 249 - 200 + _hash_noise(y, x, 13) - 128).astype(np.float32) / np.float32(4)
    cases["f_250x250"] = Image.frombytes("F", (250, 250), floats.astype("<f4").tobytes())

    return cases
