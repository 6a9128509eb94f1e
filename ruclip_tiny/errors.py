"""Error types of ruclip_tiny: each names the offending input and says how to fix it."""


class RuclipTinyError(Exception):
    """Base class of every error this package raises on bad input."""


class CheckpointError(RuclipTinyError, ValueError):
    """A checkpoint file that cannot be loaded into the model (missing, corrupt, unsafe, or of another model)."""


class ImageDecodeError(RuclipTinyError, ValueError):
    """An image that cannot be decoded (empty, truncated, not an image, or too large to decode safely)."""


class TokenizerError(RuclipTinyError, ValueError):
    """A tokenizer directory or id that cannot be loaded."""
