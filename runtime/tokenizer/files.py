"""Reading a tokenizer directory (vocab.txt, tokenizer_config.json, special_tokens_map.json, added_tokens.json) as
the original transformers 4.12.3 ``DistilBertTokenizer`` reads it: settings, special and added tokens, their ids."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ruclip_tiny.errors import TokenizerError
from ruclip_tiny.tokenizer_files import (
    DEMO_MARKER_KEY,
    EMBEDDING_ROWS,
    PUBLISHED_TOKENIZER_ID,
    read_tokenizer_json,
    read_vocab,
)

# The special-token attributes of a transformers tokenizer, in the order the original assigns ids to missing ones.
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# DistilBertTokenizer's defaults, used where neither tokenizer_config.json nor special_tokens_map.json says.
DEFAULT_SPECIAL_TOKENS = {
    "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"
}


@dataclass
class TokenizerFiles:
    directory: Path
    source: str
    is_demo: bool
    do_lower_case: bool
    strip_accents: bool
    tokenize_chinese_chars: bool
    vocab: dict[str, int]  # vocab.txt, as the original reads it
    specials: dict[str, str]  # special-token attribute -> token string
    all_special_tokens: list[str]
    added_tokens: dict[str, int]  # added (non-special) tokens -> id
    token_ids: dict[str, int]  # every special and added token -> id
    vocab_size: int


def read_tokenizer_files(path: str | os.PathLike) -> TokenizerFiles:
    source = os.fspath(path)
    directory = Path(source).expanduser()
    if not directory.exists():
        raise TokenizerError(
            f"tokenizer directory {source!r} does not exist; pass a directory holding vocab.txt (a bundle's "
            f"tokenizer/ folder, or a downloaded {PUBLISHED_TOKENIZER_ID})"
        )
    if not directory.is_dir():
        raise TokenizerError(
            f"tokenizer {source!r} is a file; pass the directory that holds vocab.txt and tokenizer_config.json"
        )
    vocab = read_vocab(directory, source)
    config = read_tokenizer_json(directory / "tokenizer_config.json", source)
    special_map = read_tokenizer_json(directory / "special_tokens_map.json", source)
    added_file = read_tokenizer_json(directory / "added_tokens.json", source)

    for key, unsupported in (("do_basic_tokenize", config.get("do_basic_tokenize", True) is not True),
                             ("never_split", bool(config.get("never_split")))):
        if unsupported:
            raise TokenizerError(
                f"tokenizer_config.json of tokenizer {source!r} sets {key}={config[key]!r}, which the runtime "
                f"tokenizer does not reproduce; use the original model's tokenizer files"
            )
    do_lower_case = bool(config.get("do_lower_case", True))  # DistilBertTokenizer's default
    strip_setting = config.get("strip_accents")
    # The original: strip when strip_accents is true, or when lowercasing and strip_accents is not explicitly false.
    strip_accents = bool(strip_setting) or (do_lower_case and strip_setting is not False)
    tokenize_chinese_chars = bool(config.get("tokenize_chinese_chars", True))

    specials = dict(DEFAULT_SPECIAL_TOKENS)
    for settings in (config, special_map):  # special_tokens_map.json has the last word, as in from_pretrained
        for key in SPECIAL_TOKEN_KEYS:
            if key in settings:
                specials[key] = _token_content(settings[key], key, source)
    specials = {key: value for key, value in specials.items() if value is not None}
    additional: list[str] = []
    for settings in (config, special_map):
        listed = settings.get("additional_special_tokens")
        if listed:
            additional = [_token_content(t, "additional_special_tokens", source) for t in listed]
    all_special_tokens = list(dict.fromkeys([specials[k] for k in SPECIAL_TOKEN_KEYS if k in specials] + additional))

    missing = [specials.get(k) or k for k in ("cls_token", "sep_token", "pad_token", "unk_token")
               if specials.get(k) not in vocab]
    if missing:
        raise TokenizerError(
            f"vocab.txt of tokenizer {source!r} lacks the special token(s) {', '.join(missing)}; a DistilBERT "
            f"vocabulary needs [CLS], [SEP], [PAD] and [UNK] (or a special_tokens_map.json naming its own)"
        )

    added_tokens, token_ids = _added_token_ids(added_file, config, vocab, all_special_tokens, source)
    vocab_size = len(vocab) + sum(1 for i in token_ids.values() if i >= len(vocab))
    if vocab_size > EMBEDDING_ROWS:
        raise TokenizerError(
            f"tokenizer {source!r} has {vocab_size} ids (vocab.txt plus added tokens); the model's embedding table "
            f"has {EMBEDDING_ROWS} rows — use the tokenizer the checkpoint was trained with"
        )
    return TokenizerFiles(
        directory=directory, source=source, is_demo=DEMO_MARKER_KEY in config, do_lower_case=do_lower_case,
        strip_accents=strip_accents, tokenize_chinese_chars=tokenize_chinese_chars, vocab=vocab, specials=specials,
        all_special_tokens=all_special_tokens, added_tokens=added_tokens, token_ids=token_ids, vocab_size=vocab_size,
    )


def _token_content(value, key: str, source: str) -> str | None:
    """A token as the files spell it: a string, an AddedToken dict ({"content": ...}), or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        if value.get("single_word"):
            raise TokenizerError(
                f"token {value['content']!r} ({key}) of tokenizer {source!r} is single_word, which the runtime "
                f"tokenizer does not reproduce; use the original model's tokenizer files"
            )
        return value["content"]
    raise TokenizerError(f"{key} of tokenizer {source!r} is {value!r}; expected a string or {{\"content\": ...}}")


def _added_token_ids(added_file: dict, config: dict, vocab: dict[str, int], specials: list[str], source: str):
    """(added non-special tokens -> id, every special and added token -> id), ids as the original assigns them:
    added_tokens.json (and tokenizer_config.json's added_tokens_decoder) at their ids, then every special token
    missing from vocab.txt appended in attribute order."""
    listed: dict[str, int] = {}
    for key, entry in (config.get("added_tokens_decoder") or {}).items():
        content = _token_content(entry, "added_tokens_decoder", source)
        if not str(key).isdigit():
            raise TokenizerError(f"added_tokens_decoder of tokenizer {source!r} has the id {key!r}; ids are integers")
        if content not in specials and vocab.get(content) != int(key):
            listed[content] = int(key)
    for content, index in added_file.items():
        if not isinstance(index, int):
            raise TokenizerError(f"added_tokens.json of tokenizer {source!r} gives {content!r} the id {index!r}")
        listed[content] = index
    added = {t: i for t, i in sorted(listed.items(), key=lambda item: item[1]) if t not in specials}
    token_ids = dict(added)
    size = len(vocab) + sum(1 for i in added.values() if i >= len(vocab))
    for token in specials:
        if token in listed:
            token_ids[token] = listed[token]
        elif token in vocab:
            token_ids[token] = vocab[token]
        else:
            token_ids[token] = size
            size += 1
    return added, token_ids
