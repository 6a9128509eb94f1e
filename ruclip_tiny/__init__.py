"""RuCLIP tiny: what the model IS (encoder I/O, preprocessing, tokenizer, reference model, checkpoints).

``import ruclip_tiny`` never imports torch: the torch-free parts (spec, image preprocessing, errors) load eagerly and
the runtime uses them; the torch parts (model, checkpoint loading, synthetic weights) load when first used.
"""

from __future__ import annotations

from importlib import import_module

from . import spec
from .errors import CheckpointError, ImageDecodeError, RuclipTinyError, TokenizerError
from .spec import EMBED_DIM, IMAGE_MEAN, IMAGE_SIZE, IMAGE_STD, MAX_TEXT_LENGTH, TEXTUAL, VISUAL
from .transform import image_transform, load_image


def _version() -> str:
    """The installed distribution's version; from a source tree that was never installed, pyproject.toml's."""
    from importlib import metadata

    try:
        return metadata.version("ruclip-tiny")
    except metadata.PackageNotFoundError:
        import re
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        if not pyproject.is_file():
            return "0+unknown"
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.M)
        return found.group(1) if found else "0+unknown"


__version__ = _version()

# name -> module that defines it; imported on first attribute access (PEP 562) so torch stays unloaded until needed.
_LAZY = {
    "RuCLIPTiny": "model",
    "load_checkpoint": "checkpoint",
    "read_state_dict": "checkpoint",
    "CheckpointInfo": "checkpoint",
    "synthetic_checkpoint": "synthetic",
    "synthetic_model": "synthetic",
    "load_tokenizer": "tokenizer",
    "Tokenizer": "tokenizer",
}

__all__ = [
    "spec", "EMBED_DIM", "IMAGE_MEAN", "IMAGE_SIZE", "IMAGE_STD", "MAX_TEXT_LENGTH", "TEXTUAL", "VISUAL",
    "CheckpointError", "ImageDecodeError", "RuclipTinyError", "TokenizerError", "image_transform", "load_image",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ruclip_tiny' has no attribute {name!r}")
