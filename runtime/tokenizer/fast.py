"""``FastTokenizer``: the reference tokenizer's ids, computed by the Rust ``tokenizers`` library, without torch.

``FastTokenizer`` gives, text for text, the ``input_ids`` and ``attention_mask`` of ``ruclip_tiny.tokenizer`` (the
original transformers 4.12.3 slow ``DistilBertTokenizer``). ``tokenizers`` classifies characters with Rust Unicode
tables that differ from the Python ``unicodedata`` tables the original used, so every text passes through a short
Python pass first; the tables that pass needs are derived at first use by probing ``tokenizers`` itself (see
``unicode_tables.rust_mismatches``), so they stay right for whatever ``tokenizers`` and Python versions are installed.

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

import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from ruclip_tiny.spec import MAX_TEXT_LENGTH
from ruclip_tiny.tokenizer_files import checked_texts

from .files import TokenizerFiles, read_tokenizer_files
from .unicode_tables import CodePoints, code_point_ranges, python_tables, rewrite_table, rust_mismatches

# BERT's WordPiece gives up on longer words (the whole word becomes [UNK]); transformers never changes it.
MAX_CHARS_PER_WORD = 100


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

    def __init__(self, files: TokenizerFiles):
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

        python = python_tables()
        mismatches = rust_mismatches(files.tokenize_chinese_chars)
        self._control = python.control
        self._marks = python.marks
        self._separators = python.separators_with_cjk if files.tokenize_chinese_chars else python.separators
        self._table, renames = rewrite_table(mismatches, self._vocab)
        self._rewrites = CodePoints(code_point_ranges(sorted(self._table)))
        # Characters that send a text down the careful path: controls and characters the table rewrites.
        self._attention = CodePoints(sorted(python.control.ranges + self._rewrites.ranges))
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
        return cls(read_tokenizer_files(path))

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


def _build_backend(files: TokenizerFiles, renames: dict[int, str], padded: bool) -> Tokenizer:
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
