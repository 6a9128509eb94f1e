"""Backends that run the exported encoder graphs without torch; each module is named for the engine it drives.

``onnxruntime``: an ONNX Runtime session per graph, numpy in, numpy out. Every backend raises BackendError
when it cannot load or run a graph, so callers (parity, the embedder) can report it instead of crashing.
"""

from ruclip_tiny.errors import RuclipTinyError


class BackendError(RuclipTinyError):
    """A graph a backend cannot load or run (bad file, unavailable provider, feeds that do not fit its inputs)."""
