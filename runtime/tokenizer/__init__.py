"""The runtime's tokenizer: the reference tokenizer's ids, computed by the Rust ``tokenizers`` library, without torch.

``fast`` holds ``FastTokenizer``; ``files`` reads a tokenizer directory; ``unicode_tables`` reconciles the Unicode
tables of ``tokenizers`` with Python's.
"""

from .fast import EncodedTexts, FastTokenizer

__all__ = ["EncodedTexts", "FastTokenizer"]
