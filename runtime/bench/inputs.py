"""What the bench feeds the pipelines: the probe set of a bundle, long texts built from it, the demo photos."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ruclip_tiny import spec
from runtime.bundle import PROBE_INPUTS, Bundle

from .settings import BenchError


@dataclass(frozen=True)
class BenchInputs:
    """pixels: float32 [Ni, 3, 224, 224] (the probe's); captions: the probe's texts under 77 tokens; long_texts:
    texts that each fill all 77 tokens; photos: JPEG paths for the end-to-end run."""

    pixels: np.ndarray
    captions: list[str]
    long_texts: list[str]
    photos: list[Path]


def load_inputs(bundle: Bundle, tokenizer) -> BenchInputs:
    """The probe set of ``bundle`` (pixels, captions), long texts built from the captions, and the demo photos."""
    from ruclip_tiny.demo import demo_photos

    path = bundle.path(PROBE_INPUTS)
    if not path.is_file():
        raise BenchError(f"{bundle.root} has no {PROBE_INPUTS}; re-export the bundle (ruclip-tiny export --force)")
    with np.load(path, allow_pickle=False) as probe:
        pixels = np.ascontiguousarray(probe["pixels"], dtype=np.float32)
        captions = [str(text) for text in probe["texts"]]
    # The probe also holds edge cases cut at 77 tokens (truncation checks); they belong to text-full, not here.
    lengths = tokenizer.encode(captions).lengths
    captions = [text for text, length in zip(captions, lengths) if length < spec.MAX_TEXT_LENGTH]
    if not len(pixels) or not captions:
        raise BenchError(f"{path} holds no images or no texts shorter than 77 tokens; re-export the bundle")
    # Each long text is every caption, starting from a different one, repeated until it overflows 77 tokens.
    long_texts = []
    for offset in range(len(captions)):
        rotated = captions[offset:] + captions[:offset]
        text = " ".join(rotated)
        while int(tokenizer.encode([text]).lengths[0]) < spec.MAX_TEXT_LENGTH:
            text = f"{text} {' '.join(rotated)}"
        long_texts.append(text)
    photos = [p for p in demo_photos() if p.suffix.lower() in (".jpg", ".jpeg")]
    return BenchInputs(pixels, captions, long_texts, photos)


def fill(items: Sequence, count: int) -> list:
    """``items`` repeated (in order) to exactly ``count`` entries."""
    return [items[i % len(items)] for i in range(count)]
