"""Inputs shared by the old-stack expectation script (scripts/legacy_reference.py) and the parity tests.

numpy only: this module is imported both by the tests and inside the side venv that runs the 2022 stack.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXPECTATIONS = ROOT / "tests" / "data" / "legacy_expectations.npz"
TOKENIZER_CORPUS = ROOT / "tests" / "data" / "tokenizer_corpus.json"
DEMO_TOKENIZER_DIR = ROOT / "ruclip_tiny" / "assets" / "tokenizer"
DEMO_PHOTO_DIR = ROOT / "ruclip_tiny" / "assets" / "demo"
SYNTHETIC_SEED = 1234  # the seed of the checkpoint the expectations were computed with

# Texts whose features are compared: labels, captions, ё/й, Latin, punctuation, an over-length text, empty.
FEATURE_TEXTS = [
    "кошка",
    "Ракета взлетает в небо",
    "чашка горячего кофе на столе",
    "астронавт в белом скафандре",
    "диаграмма",
    "Ёжик и йогурт: «что-то новое»!",
    "photo of a cat — фото кота, 2022",
    "",
    " ".join(["очень длинное описание фотографии с множеством подробностей"] * 12),
]
# Which preprocessing cases are also pushed through the image encoder (besides every demo photo).
FEATURE_IMAGE_CASES = ("rgba_333x500", "rgb_1999x1501_large")
SAMPLES_PER_IMAGE = 2048  # float values per preprocessed image kept in the expectations


def demo_photos() -> list[Path]:
    return sorted(p for p in DEMO_PHOTO_DIR.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def state_fingerprint(state: dict[str, np.ndarray]) -> str:
    """sha256 over names, shapes and float32 bytes of a state dict, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        array = np.ascontiguousarray(state[name], dtype=np.float32)
        digest.update(name.encode())
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def sample_indices(count: int, size: int, seed: int) -> np.ndarray:
    """``count`` distinct positions spread over a flattened image of ``size`` values, different for each ``seed``.

    Integer arithmetic only (a stride coprime to every image size used here), so both venvs agree without an RNG.
    """
    stride = 7919  # prime, so i * stride mod size never repeats for sizes it does not divide
    assert size % stride and count <= size
    return np.sort((np.arange(count, dtype=np.int64) * stride + 104729 * seed) % size)


def crop_sha256(crop: np.ndarray) -> str:
    """Identifies a uint8 [224, 224, 3] RGB crop exactly, in a few bytes instead of 150 KB."""
    return hashlib.sha256(np.ascontiguousarray(crop, dtype=np.uint8).tobytes()).hexdigest()


def corpus_sha256(texts: list[str]) -> str:
    """Identifies the exact corpus the token expectations were computed from."""
    return hashlib.sha256("\x1e".join(texts).encode("utf-8")).hexdigest()
