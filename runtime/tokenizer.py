"""The runtime's tokenizer: the reference tokenizer's ids, computed by the Rust ``tokenizers`` library, without torch.

``FastTokenizer`` gives, text for text, the ``input_ids`` and ``attention_mask`` of ``ruclip_tiny.tokenizer`` (the
original transformers 4.12.3 slow ``DistilBertTokenizer``). ``tokenizers`` classifies characters with Rust Unicode
tables that differ from the Python ``unicodedata`` tables the original used, so every text passes through a short
Python pass first; the tables that pass needs are derived at first use by probing ``tokenizers`` itself (see
``_rust_mismatches``), so they stay right for whatever ``tokenizers`` and Python versions are installed.

How each step of the original is reproduced:
- lowercasing (``do_lower_case``): Python, character by character, sparing special and added tokens, BEFORE those
  tokens are split off (4.12.3 ``PreTrainedTokenizer.tokenize``);
- special and added tokens: split off in Python (longest match first), never by ``tokenizers``, so that a token
  string that appears only after control characters are dropped or accents stripped is not taken for a token;
- dropping control characters (``_clean_text``: categories Cc, Cf, Cs, Co and Cn as Python knows them, U+0000 and
  U+FFFD): Python, so unassigned code points vanish instead of becoming [UNK] and lone surrogates never reach
  ``tokenizers`` (which cannot take them);
- accent stripping (NFD, then drop category Mn): Python (the Rust tables miss marks added since their Unicode);
- whitespace, CJK ideographs, punctuation splitting and WordPiece: ``tokenizers`` (``BertNormalizer`` with
  ``clean_text`` and ``handle_chinese_chars``, ``BertPreTokenizer``, ``WordPiece``), with the characters on which
  the two disagree rewritten first: a character Python splits off and Rust keeps in its word is surrounded by
  spaces; a character Python keeps in its word and Rust splits off (or drops) is renamed, in the text and in the
  WordPiece vocabulary alike, to a code point that Rust treats as a letter and no text can hold after the Python
  pass (one Python reports as unassigned).
"""

from __future__ import annotations

import bisect
import functools
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from ruclip_tiny.errors import TokenizerError
from ruclip_tiny.spec import MAX_TEXT_LENGTH
from ruclip_tiny.tokenizer import (
    DEMO_MARKER_KEY,
    EMBEDDING_ROWS,
    PUBLISHED_TOKENIZER_ID,
    checked_texts,
    read_tokenizer_json,
    read_vocab,
)

# BERT's WordPiece gives up on longer words (the whole word becomes [UNK]); transformers never changes it.
MAX_CHARS_PER_WORD = 100
# The special-token attributes of a transformers tokenizer, in the order the original assigns ids to missing ones.
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# DistilBertTokenizer's defaults, used where neither tokenizer_config.json nor special_tokens_map.json says.
DEFAULT_SPECIAL_TOKENS = {
    "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"
}
# BERT's "Chinese character" blocks (CJK ideographs), exactly as the original's _is_chinese_char lists them.
CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)
# Where renamed characters go: planes 4-13 are unassigned in every Unicode version so far, so the Python pass removes
# them from every text while the Rust tables see ordinary letters there (both checked at first use).
_RENAME_TARGETS = range(0x40000, 0x40000 + 4096)


@dataclass(frozen=True)
class EncodedTexts:
    """A tokenized batch.

    input_ids, attention_mask: int64 [B, 77] (``[CLS] pieces [SEP]``, truncated to 77, right-padded with [PAD]; the
    mask is 1 on real tokens); lengths: int64 [B], real tokens per row (the mask's row sums); truncated: indices of
    the texts cut at 77 tokens, ascending.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    lengths: np.ndarray
    truncated: list[int]

    def trimmed(self) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) without the padding columns no row needs: int64 [B, max(lengths)], for a text
        graph with a dynamic sequence dimension."""
        width = int(self.lengths.max()) if len(self.lengths) else 0
        return self.input_ids[:, :width], self.attention_mask[:, :width]


class FastTokenizer:
    """A tokenizer directory, encoding texts exactly as ``ruclip_tiny.tokenizer.Tokenizer`` does, with ``tokenizers``.

    Attributes, as on the reference: ``directory``, ``source``, ``is_demo``, ``do_lower_case``, ``strip_accents``
    (whether accents are stripped, as the original decides it from ``strip_accents`` and ``do_lower_case``),
    ``vocab_size`` (ids it can emit: vocabulary plus added tokens), ``pad_id``/``cls_id``/``sep_id``/``unk_id`` (read
    from the vocabulary), ``max_length`` (77), ``backend`` (the ``tokenizers.Tokenizer``; it does not handle special
    or added tokens in the text nor the Unicode differences by itself: encode through this class).
    """

    max_length = MAX_TEXT_LENGTH

    def __init__(self, files: _TokenizerFiles):
        self.directory = files.directory
        self.source = files.source
        self.is_demo = files.is_demo
        self.do_lower_case = files.do_lower_case
        self.strip_accents = files.strip_accents
        self._vocab = files.vocab
        self._token_ids = files.token_ids
        self.vocab_size = files.vocab_size
        self.pad_id, self.cls_id, self.sep_id, self.unk_id = (
            files.token_ids[files.specials[key]] for key in ("pad_token", "cls_token", "sep_token", "unk_token")
        )
        self._never_split = frozenset(files.all_special_tokens)

        python = _python_tables()
        mismatches = _rust_mismatches(files.tokenize_chinese_chars)
        self._control = python.control
        self._marks = python.marks
        self._separators = python.separators_with_cjk if files.tokenize_chinese_chars else python.separators
        self._table, renames = _rewrite_table(mismatches, self._vocab)
        self._rewrites = _CodePoints(_ranges(sorted(self._table)))
        # Characters that send a text down the careful path: controls and characters the table rewrites.
        self._attention = _CodePoints(sorted(python.control.ranges + self._rewrites.ranges))
        # The original's lowercasing spares these, tried in this order (its regex alternation).
        spared = sorted(files.token_ids) + list(files.all_special_tokens)
        self._spared = re.compile("(" + "|".join(re.escape(t) for t in spared) + ")")
        # Special and added tokens, split off the (lowercased) text longest first, like the original's trie.
        no_split = sorted(files.token_ids, key=lambda t: (-len(t), t))
        self._no_split = re.compile("(" + "|".join(re.escape(t) for t in no_split) + ")")
        self._special_strings = re.compile("|".join(re.escape(t) for t in sorted(self._never_split)))

        self.backend = _build_backend(files, renames, padded=True)
        self._pieces_backend = _build_backend(files, renames, padded=False)

    @classmethod
    def from_directory(cls, path: str | os.PathLike) -> FastTokenizer:
        """Load a tokenizer directory: vocab.txt, optional tokenizer_config.json, special_tokens_map.json and
        added_tokens.json (for instance a bundle's ``tokenizer/`` folder).

        Raises TokenizerError naming the directory and the fix.
        """
        return cls(_read_tokenizer_files(path))

    def __repr__(self) -> str:
        kind = "demo vocabulary" if self.is_demo else "tokenizer"
        return f"FastTokenizer({kind} {self.source!r}, {self.vocab_size} ids, do_lower_case={self.do_lower_case})"

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encode a batch of texts: a list (or other sequence) of str; a bare str is refused, pass ``[text]``.

        Returns (input_ids, attention_mask), both int64 [B, 77], equal to the reference tokenizer's.
        """
        encoded = self.encode(texts)
        return encoded.input_ids, encoded.attention_mask

    def encode(self, texts: Sequence[str]) -> EncodedTexts:
        """Encode a batch and say which texts were cut: see ``EncodedTexts``."""
        texts = checked_texts(texts, "FastTokenizer")
        batch = len(texts)
        input_ids = np.full((batch, self.max_length), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((batch, self.max_length), dtype=np.int64)
        truncated = np.zeros(batch, dtype=bool)
        prepared = [self._prepare(text) for text in texts]
        plain = [i for i, p in enumerate(prepared) if isinstance(p, str)]
        if plain:
            encodings = self.backend.encode_batch([prepared[i] for i in plain], add_special_tokens=True)
            input_ids[plain] = [e.ids for e in encodings]
            attention_mask[plain] = [e.attention_mask for e in encodings]
            truncated[plain] = [bool(e.overflowing) for e in encodings]
        pieced = [i for i, p in enumerate(prepared) if not isinstance(p, str)]
        if pieced:
            self._encode_pieced([prepared[i] for i in pieced], pieced, input_ids, attention_mask, truncated)
        lengths = attention_mask.sum(axis=1)
        return EncodedTexts(input_ids, attention_mask, lengths, np.flatnonzero(truncated).tolist())

    def encode_with_truncation(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(input_ids, attention_mask, truncated): the ids and mask of ``__call__`` and the indices of the texts that
        had more than 77 tokens (with [CLS] and [SEP]) and were cut."""
        encoded = self.encode(texts)
        return encoded.input_ids, encoded.attention_mask, encoded.truncated

    def truncated_indices(self, texts: Sequence[str]) -> list[int]:
        """Indices of the texts that encoding cuts short, as ``ruclip_tiny.tokenizer.Tokenizer.truncated_indices``."""
        return self.encode(texts).truncated

    # --- the Python pass ----------------------------------------------------------------------------------------

    def _prepare(self, text: str) -> str | list[str | list[int]]:
        """The text for ``tokenizers`` (a str), or, when it holds special/added tokens, a list of pieces: str to
        tokenize, lists of ids to insert as they are."""
        if self.do_lower_case:
            text = self._lowercase(text)
        if self._no_split.search(text):
            pieces: list[str | list[int]] = []
            for i, part in enumerate(self._no_split.split(text)):
                if i % 2:
                    pieces.append([self._token_ids[part]])
                elif part:
                    cleaned = self._clean(part)
                    pieces.extend([cleaned] if isinstance(cleaned, str) else cleaned)
            return pieces
        return self._clean(text)

    def _lowercase(self, text: str) -> str:
        # The original lowercased one character at a time (a regex alternation ending in ".+?"), so capital sigma
        # never became the final form "ς" that str.lower() gives it at a word's end.
        if not self._spared.search(text):
            return text.replace("Σ", "σ").lower()
        parts = self._spared.split(text)
        parts[::2] = [part.replace("Σ", "σ").lower() for part in parts[::2]]
        return "".join(parts)

    def _clean(self, segment: str) -> str | list[str | list[int]]:
        """One stretch of text between special/added tokens, ready for ``tokenizers``."""
        if not self._attention.search(segment):
            return self._fold(segment) if self.strip_accents else segment
        if self._control.search(segment):
            segment = self._control.remove(segment)
            if self._special_strings.search(segment):
                return self._split_never_split(segment)
        return self._fold(segment)

    def _fold(self, segment: str) -> str:
        if self.strip_accents and not segment.isascii():
            segment = self._marks.remove(unicodedata.normalize("NFD", segment))
        if self._rewrites.search(segment):
            segment = segment.translate(self._table)
        return segment

    def _split_never_split(self, segment: str) -> list[str | list[int]]:
        """A segment in which dropping control characters left a special-token string.

        The original keeps a WHOLE word that equals a special token (its BasicTokenizer's never_split) unfolded and
        unsplit, and WordPiece-encodes it as one word; anywhere else the string is ordinary text.
        """
        pieces: list[str | list[int]] = []
        text: list[str] = []
        for i, part in enumerate(self._separators.split(segment)):
            if i % 2 == 0 and part in self._never_split:
                pieces.append(self._fold("".join(text)))
                pieces.append(self._wordpiece(part))
                text = []
            else:
                text.append(part)
        pieces.append(self._fold("".join(text)))
        return [p for p in pieces if p != ""]

    def _wordpiece(self, word: str) -> list[int]:
        """The original's WordpieceTokenizer on one word (greedy longest match, "##" continuations), as ids."""
        if len(word) > MAX_CHARS_PER_WORD:
            return [self.unk_id]
        pieces, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self._vocab:
                    break
            else:
                return [self.unk_id]
            pieces.append(piece)
            start = end
        return [self._token_ids.get(p, self._vocab[p]) for p in pieces]

    def _encode_pieced(self, prepared, rows, input_ids, attention_mask, truncated) -> None:
        texts = [p for pieces in prepared for p in pieces if isinstance(p, str)]
        encoded = iter(e.ids for e in self._pieces_backend.encode_batch(texts, add_special_tokens=False))
        room = self.max_length - 2
        for row, pieces in zip(rows, prepared):
            ids = [i for p in pieces for i in (next(encoded) if isinstance(p, str) else p)]
            truncated[row] = len(ids) > room
            ids = [self.cls_id, *ids[:room], self.sep_id]
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1


# --- reading a tokenizer directory -------------------------------------------------------------------------------


@dataclass
class _TokenizerFiles:
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


def _read_tokenizer_files(path: str | os.PathLike) -> _TokenizerFiles:
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
    return _TokenizerFiles(
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


# --- Unicode: what Python (the original) and the Rust tables say about each code point ---------------------------


class _CodePoints:
    """A set of code points, as ranges, that texts are searched for and cleaned of, fast.

    A regex class over ranges above U+FFFF is scanned range by range for every character (about a microsecond per
    character for the control set); over the BMP alone it becomes a bitmap. So the BMP part is a regex, and the rare
    astral characters of a text are looked up by bisection.
    """

    def __init__(self, ranges: list[tuple[int, int]]):
        self.ranges = ranges
        self._bmp = _char_class([(a, min(b, 0xFFFF)) for a, b in ranges if a <= 0xFFFF])
        astral = [(max(a, 0x10000), b) for a, b in ranges if b > 0xFFFF]
        self._starts = [a for a, _ in astral]
        self._ends = [b for _, b in astral]

    def _has_astral(self, char: str) -> bool:
        i = bisect.bisect_right(self._starts, ord(char)) - 1
        return i >= 0 and ord(char) <= self._ends[i]

    def search(self, text: str) -> bool:
        """Whether the text holds any of the code points."""
        if self._bmp.search(text):
            return True
        return bool(self._starts) and _ASTRAL.search(text) is not None and any(
            self._has_astral(c) for c in text if c > "\uffff"
        )

    def remove(self, text: str) -> str:
        """The text without any of the code points."""
        text = self._bmp.sub("", text)
        if self._starts and _ASTRAL.search(text):
            text = "".join(c for c in text if c <= "\uffff" or not self._has_astral(c))
        return text


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class _PythonTables:
    control: _CodePoints  # the original's _clean_text drops these
    marks: _CodePoints  # category Mn: accent stripping drops these after NFD
    separators: re.Pattern  # what splits words before the original's never_split check (captured)
    separators_with_cjk: re.Pattern
    kept: np.ndarray  # int64 [K]: every code point the original does not drop
    punctuation: frozenset[int]  # kept code points the original's _is_punctuation accepts
    spaces: frozenset[int]  # kept code points that separate words (str.isspace)


def _ranges(codepoints: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted code points as inclusive (first, last) runs."""
    cps = np.asarray(list(codepoints) if not isinstance(codepoints, np.ndarray) else codepoints, dtype=np.int64)
    if cps.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(cps) != 1)
    starts = np.concatenate([[cps[0]], cps[breaks + 1]])
    ends = np.concatenate([cps[breaks], [cps[-1]]])
    return list(zip(starts.tolist(), ends.tolist()))


def _char_class(ranges: list[tuple[int, int]]) -> re.Pattern:
    """A regex matching one character of any of the ranges."""
    if not ranges:
        return re.compile("(?!)")
    body = "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)
    return re.compile(f"[{body}]")


@functools.cache
def _python_tables() -> _PythonTables:
    """Python's unicodedata classes of every code point, scanned once per process (about 0.2 s)."""
    codes = "".join(map(unicodedata.category, map(chr, range(0x110000)))).encode("ascii")
    categories = np.frombuffer(codes, dtype=np.uint8).reshape(-1, 2)
    major, minor = categories[:, 0], categories[:, 1]
    codepoints = np.arange(0x110000)
    # The original's _is_control: every category C*, but tab, newline and carriage return; _clean_text also drops
    # NUL (a Cc) and U+FFFD.
    control = major == ord("C")
    control[[9, 10, 13]] = False
    control[0xFFFD] = True
    ascii_punctuation = (
        ((codepoints >= 33) & (codepoints <= 47)) | ((codepoints >= 58) & (codepoints <= 64))
        | ((codepoints >= 91) & (codepoints <= 96)) | ((codepoints >= 123) & (codepoints <= 126))
    )
    punctuation = ~control & (ascii_punctuation | (major == ord("P")))
    kept = np.flatnonzero(~control)
    spaces = [cp for cp in kept.tolist() if chr(cp).isspace()]
    cjk = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in CJK_RANGES)
    return _PythonTables(
        control=_CodePoints(_ranges(np.flatnonzero(control))),
        marks=_CodePoints(_ranges(np.flatnonzero((major == ord("M")) & (minor == ord("n"))))),
        separators=re.compile(r"(\s+)"),
        separators_with_cjk=re.compile(rf"(\s+|[{cjk}])"),
        kept=kept,
        punctuation=frozenset(np.flatnonzero(punctuation).tolist()),
        spaces=frozenset(spaces),
    )


@functools.cache
def _rust_mismatches(chinese: bool) -> dict[int, tuple[str, str]]:
    """Code points the original keeps on which ``tokenizers`` disagrees: cp -> (python class, rust class).

    Classes: "space" (separates words), "split" (a word of its own: punctuation, CJK ideographs when ``chinese``),
    "word" (part of a word), and for Rust also "drop" and "changed:<output>". Found by running every kept code point
    through the very normalizer and pre-tokenizer the runtime uses (about 0.1 s).
    """
    python = _python_tables()
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=chinese, strip_accents=False, lowercase=False
    )
    rust: dict[int, str] = {}
    letters: list[str] = []
    kept = python.kept.tolist()
    for separator, probed in (("|", [cp for cp in kept if cp != ord("|")]), ("#", [ord("|")])):
        chars = list(map(chr, probed))
        outputs = normalizer.normalize_str(separator.join(chars) + separator).split(separator)
        for char, out in zip(chars, outputs):
            if out == " ":
                rust[ord(char)] = "space"
            elif out == char:
                letters.append(char)
            elif out == "":
                rust[ord(char)] = "drop"
            else:
                rust[ord(char)] = "split" if out == f" {char} " else f"changed:{out}"
    # Punctuation: pre-tokenize "a" + c + "a" + d + "a" ...; every character split off comes back alone.
    for piece, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str("a" + "a".join(letters) + "a"):
        if len(piece) == 1 and piece != "a":
            rust[ord(piece)] = "split"

    python_split = set(python.punctuation)
    if chinese:
        in_cjk = np.zeros(len(python.kept), dtype=bool)
        for a, b in CJK_RANGES:
            in_cjk |= (python.kept >= a) & (python.kept <= b)
        python_split.update(python.kept[in_cjk].tolist())
    rust_split = {cp for cp, kind in rust.items() if kind == "split"}
    rust_space = {cp for cp, kind in rust.items() if kind == "space"}
    suspects = (python_split ^ rust_split) | (python.spaces ^ rust_space) | (rust.keys() - rust_split - rust_space)
    mismatches = {}
    for cp in suspects:
        py = "space" if cp in python.spaces else "split" if cp in python_split else "word"
        if rust.get(cp, "word") != py:
            mismatches[cp] = (py, rust.get(cp, "word"))
    return mismatches


@functools.cache
def _rename_targets() -> tuple[int, ...]:
    """The rename targets that Python reports as unassigned and the Rust tables take for letters."""
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
    )
    targets = [cp for cp in _RENAME_TARGETS
               if unicodedata.category(chr(cp)) == "Cn" and normalizer.normalize_str(chr(cp)) == chr(cp)]
    words = pre_tokenizers.BertPreTokenizer().pre_tokenize_str("a" + "a".join(map(chr, targets)) + "a")
    split = {ord(piece) for piece, _ in words if len(piece) == 1 and piece != "a"}
    return tuple(cp for cp in targets if cp not in split)


def _rewrite_table(mismatches: dict[int, tuple[str, str]], vocab: dict[str, int]):
    """(str.translate table for texts, renames for the WordPiece vocabulary) that make Rust agree with Python."""
    table: dict[int, str] = {}
    renames: dict[int, str] = {}
    # Where Rust would split a word Python keeps whole, or lose a character Python keeps, Rust gets a letter instead.
    needs_rename = [cp for cp, (python, rust) in mismatches.items()
                    if (python == "word" and rust != "word") or (python == "split" and rust not in ("split", "word"))]
    if needs_rename:
        used = {ord(c) for token in vocab for c in token}
        free = (cp for cp in _rename_targets() if cp not in used)
        for cp in needs_rename:
            target = next(free, None)
            if target is None:
                raise TokenizerError("no free code point to rename a Unicode-table mismatch to; this vocabulary uses "
                                     "all of U+40000..U+40FFF")
            renames[cp] = chr(target)
    for cp, (python, rust) in mismatches.items():
        if python == "space":
            table[cp] = " "
        elif python == "split":
            table[cp] = f" {renames.get(cp, chr(cp))} "
        else:
            table[cp] = renames[cp]
    return table, renames


def _build_backend(files: _TokenizerFiles, renames: dict[int, str], padded: bool) -> Tokenizer:
    """The ``tokenizers`` pipeline: BertNormalizer (clean_text, handle_chinese_chars; lowercasing and accent
    stripping stay in Python), BertPreTokenizer, WordPiece over vocab.txt (renamed characters renamed in it too);
    ``padded``: with "[CLS] $A [SEP]", truncation to 77 and padding to 77 with [PAD]."""
    vocab = files.vocab
    if renames:
        table = {cp: target for cp, target in renames.items()}
        vocab = {token.translate(table): i for token, i in vocab.items()}
    unk = files.specials["unk_token"]
    backend = Tokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=MAX_CHARS_PER_WORD,
                                         continuing_subword_prefix="##"))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=files.tokenize_chinese_chars, strip_accents=False, lowercase=False
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if padded:
        cls, sep, pad = (files.specials[k] for k in ("cls_token", "sep_token", "pad_token"))
        backend.post_processor = processors.TemplateProcessing(
            single=[cls, "$A", sep],
            special_tokens=[(cls, files.token_ids[cls]), (sep, files.token_ids[sep])],
        )
        backend.enable_truncation(max_length=MAX_TEXT_LENGTH)
        backend.enable_padding(length=MAX_TEXT_LENGTH, pad_id=files.token_ids[pad], pad_token=pad)
    return backend
