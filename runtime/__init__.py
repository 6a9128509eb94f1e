"""Loads a bundle and computes embeddings without torch (numpy, pillow, tokenizers, onnxruntime, tensorrt).

The public names load on first use (PEP 562), so ``import runtime`` stays cheap and pulls in no backend:

    from runtime import Embedder, Bundle, open_backend, run_parity
"""

from __future__ import annotations

from importlib import import_module

# name -> module that defines it
_PUBLIC = {
    "Embedder": "runtime.embedder",
    "Bundle": "runtime.bundle",
    "BundleError": "runtime.bundle",
    "open_backend": "runtime.backends",
    "run_parity": "runtime.parity",
    "Collection": "runtime.collection",
    "FastTokenizer": "runtime.tokenizer",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
