"""The tokenizer directory's files and constants, shared by the reference tokenizer (``ruclip_tiny.tokenizer``, which
needs transformers) and the runtime's fast tokenizer (torch- and transformers-free): this module imports neither."""

from __future__ import annotations

import json
from pathlib import Path

from ruclip_tiny.errors import TokenizerError
from ruclip_tiny.spec import TEXT_ENCODER_CONFIG

DEMO_TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "tokenizer"
"""The shipped synthetic demo vocabulary (scripts/build_demo_vocab.py); NOT the published model's tokenizer."""

PUBLISHED_TOKENIZER_ID = "DeepPavlov/distilrubert-tiny-cased-conversational-v1"
# tokenizer_config.json key that marks the shipped demo vocabulary (also in a bundle's copy of it).
DEMO_MARKER_KEY = "ruclip_tiny_synthetic_demo"
# Every id must index a row of the text encoder's word-embedding table.
EMBEDDING_ROWS = TEXT_ENCODER_CONFIG["vocab_size"]


def read_vocab(directory: Path, source: str) -> dict[str, int]:
    """vocab.txt of a tokenizer directory as {token: id}, read like the original's load_vocab (text-mode
    readlines, "\n" stripped, the last id of a repeated token wins); TokenizerError when missing, not UTF-8, or
    larger than the model's embedding table. Shared with the runtime's fast tokenizer."""
    path = directory / "vocab.txt"
    if not path.is_file():
        raise TokenizerError(
            f"tokenizer directory {source!r} has no vocab.txt; pass a directory saved by "
            f"DistilBertTokenizer.save_pretrained (for the published model: {PUBLISHED_TOKENIZER_ID})"
        )
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError as e:
        raise TokenizerError(f"vocab.txt of tokenizer {source!r} is not UTF-8 ({e}); re-save it as UTF-8") from e
    if len(lines) > EMBEDDING_ROWS:
        raise TokenizerError(
            f"vocab.txt of tokenizer {source!r} has {len(lines)} entries; the model's embedding table has "
            f"{EMBEDDING_ROWS} rows, so ids would overflow it — use the tokenizer the checkpoint was trained with"
        )
    return {line.rstrip("\n"): i for i, line in enumerate(lines)}


def read_tokenizer_json(path: Path, source: str) -> dict:
    """A tokenizer JSON file (tokenizer_config.json, ...) as a dict; {} when absent; TokenizerError when broken."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path.name} of tokenizer {source!r} is not valid JSON ({e}); fix or remove it") from e
    if not isinstance(data, dict):
        raise TokenizerError(f"{path.name} of tokenizer {source!r} must hold a JSON object")
    return data


def checked_texts(texts, caller: str) -> list[str]:
    """``texts`` as a list of str; TypeError naming the fix for a bare str, and the index of a non-str item."""
    if isinstance(texts, str):
        raise TypeError(f"{caller}() takes a list of texts, got a single str; pass [text]")
    if isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"{caller}() takes a list of str, got {type(texts).__name__}")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{caller}(): texts[{i}] is {type(text).__name__}, not str: {text!r:.80}")
    return texts
