"""The reference tokenizer: texts -> input_ids / attention_mask exactly as the original RuCLIP tiny produced them.

The original ran transformers 4.12.3's slow ``DistilBertTokenizer`` with ``truncation=True, max_length=77,
padding='max_length'``. transformers is imported only inside functions, so importing this module stays torch- and
transformers-free; loading a tokenizer needs the ``export`` extra.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ruclip_tiny.errors import TokenizerError
from ruclip_tiny.spec import MAX_TEXT_LENGTH
from ruclip_tiny.tokenizer_files import (  # noqa: F401 — re-exported: this module's public names since the start
    DEMO_MARKER_KEY,
    DEMO_TOKENIZER_DIR,
    EMBEDDING_ROWS,
    PUBLISHED_TOKENIZER_ID,
    checked_texts,
    read_tokenizer_json,
    read_vocab,
)

# A Hugging Face repo id ("name" or "owner/name"); anything else that is not an existing path is a bad path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


class Tokenizer:
    """A loaded tokenizer directory, encoding texts the way the original model did.

    Attributes: ``source`` (the path or id it was loaded from), ``directory`` (the local directory holding its
    files), ``is_demo`` (the shipped synthetic vocabulary, or a copy of it), ``do_lower_case``, ``vocab_size``
    (number of ids it can emit, vocabulary plus added tokens), ``pad_id``/``cls_id``/``sep_id``/``unk_id``
    (read from the vocabulary), ``max_length`` (77).
    """

    max_length = MAX_TEXT_LENGTH

    def __init__(self, backend, directory: Path, source: str, config: dict):
        self._backend = backend
        self.directory = directory
        self.source = source
        self.is_demo = DEMO_MARKER_KEY in config
        self.do_lower_case = bool(backend.do_lower_case)
        self.vocab_size = len(backend)
        self.pad_id = backend.pad_token_id
        self.cls_id = backend.cls_token_id
        self.sep_id = backend.sep_token_id
        self.unk_id = backend.unk_token_id

    def __repr__(self) -> str:
        kind = "demo vocabulary" if self.is_demo else "tokenizer"
        return f"Tokenizer({kind} {self.source!r}, {self.vocab_size} ids, do_lower_case={self.do_lower_case})"

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encode a batch of texts.

        texts: a list (or other sequence) of str; a bare str is refused, pass ``[text]``.
        Returns (input_ids, attention_mask), both int64 [B, 77]: ``[CLS] pieces [SEP]`` truncated to 77 tokens and
        right-padded with [PAD]; the mask is 1 on real tokens (specials included) and 0 on padding.
        """
        texts = checked_texts(texts, "tokenizer")
        if not texts:
            empty = np.zeros((0, self.max_length), dtype=np.int64)
            return empty, empty.copy()
        # The original batch_encode_plus call, argument for argument (transformers 5 folded it into __call__).
        encoded = self._backend(
            texts,
            truncation=True,
            add_special_tokens=True,
            max_length=self.max_length,
            padding="max_length",
            return_attention_mask=True,
        )
        input_ids = np.asarray(encoded["input_ids"], dtype=np.int64)
        attention_mask = np.asarray(encoded["attention_mask"], dtype=np.int64)
        return input_ids, attention_mask

    def tokenize(self, text: str) -> list[str]:
        """The word pieces of one text, without [CLS]/[SEP] and without truncation."""
        (text,) = checked_texts([text], "tokenize")
        return self._backend.tokenize(text)

    def truncated_indices(self, texts: Sequence[str]) -> list[int]:
        """Indices of the texts that calling the tokenizer cuts short (more than 77 tokens with [CLS] and [SEP])."""
        texts = checked_texts(texts, "truncated_indices")
        room = self.max_length - self._backend.num_special_tokens_to_add(pair=False)
        return [i for i, text in enumerate(texts) if len(self._backend.tokenize(text)) > room]

    def convert_ids_to_tokens(self, ids) -> list[str]:
        """Token strings of ids (any int sequence or int64 numpy row)."""
        return self._backend.convert_ids_to_tokens([int(i) for i in ids])


def load_tokenizer(path_or_id: str | os.PathLike | None = None) -> Tokenizer:
    """Load a tokenizer directory (vocab.txt, optional tokenizer_config.json / special_tokens_map.json).

    path_or_id: a local directory; None for the shipped demo vocabulary; or a Hugging Face id, taken from the local
    Hugging Face cache, or downloaded when the hub is reachable (checked with a 3 s connect first, never a long hang).
    Raises TokenizerError naming the input and the fix.
    """
    if path_or_id is None:
        directory, source = DEMO_TOKENIZER_DIR, str(DEMO_TOKENIZER_DIR)
    else:
        source = os.fspath(path_or_id)
        directory = _resolve_directory(path_or_id)
    read_vocab(directory, source)
    config = read_tokenizer_json(directory / "tokenizer_config.json", source)
    backend = _load_backend(directory, source)
    _check_special_tokens(backend, source)
    if len(backend) > EMBEDDING_ROWS:
        raise TokenizerError(
            f"tokenizer {source!r} has {len(backend)} ids (vocab.txt plus added tokens); the model's embedding table "
            f"has {EMBEDDING_ROWS} rows — use the tokenizer the checkpoint was trained with"
        )
    return Tokenizer(backend, directory, source, config)


def _resolve_directory(path_or_id: str | os.PathLike) -> Path:
    """The local directory for a path, or for a Hugging Face id already in the local cache."""
    source = os.fspath(path_or_id)
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise TokenizerError(
            f"tokenizer {source!r} is a file; pass the directory that holds vocab.txt and tokenizer_config.json"
        )
    if isinstance(path_or_id, str) and _HUB_ID.match(source) and ".." not in source:
        cached = _hub_cache_directory(source) or _hub_download(source)
        if cached is not None:
            return cached
        raise TokenizerError(
            f"tokenizer {source!r} is not a local directory, is not in the local Hugging Face cache, and the hub "
            f"cannot be reached from here — pass the tokenizer as a local directory holding vocab.txt (for the "
            f"published model: a downloaded {PUBLISHED_TOKENIZER_ID})"
        )
    raise TokenizerError(
        f"tokenizer directory {source!r} does not exist; pass a directory holding vocab.txt (for the published "
        f"model: a downloaded {PUBLISHED_TOKENIZER_ID}), or None for the demo vocabulary"
    )


def _hub_cache_directory(repo_id: str) -> Path | None:
    """The cached snapshot directory of a hub id, or None; never touches the network."""
    _require_transformers()
    from transformers.utils import cached_file

    try:
        # local_files_only: an uncached id fails at once instead of waiting on (absent) network.
        vocab = cached_file(repo_id, "vocab.txt", local_files_only=True)
    except Exception:  # noqa: BLE001 — every failure here means the same thing: not usable offline
        return None
    return Path(vocab).parent if vocab else None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether downloading can even start: not offline by setting, and the hub's port answers within ``timeout``."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_download(repo_id: str) -> Path | None:
    """Download a hub id's tokenizer files into the Hugging Face cache when the network allows; else None.

    The reachability check comes first because huggingface_hub retries an unreachable host for ~25 s.
    """
    if not _hub_reachable():
        return None
    from huggingface_hub import snapshot_download

    try:
        files = ["vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"]
        return Path(snapshot_download(repo_id, allow_patterns=files))
    except Exception:  # noqa: BLE001 — any failure means the same to the caller: not available
        return None


def _load_backend(directory: Path, source: str):
    cls = _original_tokenizer_class()
    try:
        # from_pretrained reads tokenizer_config.json, special_tokens_map.json and added_tokens.json as the
        # original's from_pretrained did (do_lower_case defaults to True when the config does not say).
        return cls.from_pretrained(str(directory), local_files_only=True)
    except Exception as e:  # noqa: BLE001 — any failure is a bad tokenizer directory
        raise TokenizerError(f"tokenizer {source!r} cannot be loaded ({type(e).__name__}: {e})") from e


def _check_special_tokens(backend, source: str) -> None:
    # The original would silently append a missing special token after the vocabulary, giving an id the
    # checkpoint never learned; refuse instead.
    required = {
        "cls_token": backend.cls_token,
        "sep_token": backend.sep_token,
        "pad_token": backend.pad_token,
        "unk_token": backend.unk_token,
    }
    missing = [str(token) for token in required.values() if token is None or str(token) not in backend.vocab]
    if missing:
        raise TokenizerError(
            f"vocab.txt of tokenizer {source!r} lacks the special token(s) {', '.join(missing)}; a DistilBERT "
            f"vocabulary needs [CLS], [SEP], [PAD] and [UNK] (or a special_tokens_map.json naming its own)"
        )


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "the reference tokenizer (ruclip_tiny.tokenizer) needs transformers: pip install '.[export]' in a checkout "
            "of ruclip-tiny; a torch-free deployment tokenizes with the runtime's tokenizer instead"
        ) from e


@functools.cache
def _original_tokenizer_class():
    """transformers 4.12.3's slow DistilBertTokenizer, rebuilt on today's transformers.

    Why BertTokenizerLegacy and not today's DistilBertTokenizer: in transformers 5 DistilBertTokenizer is backed by
    the Rust `tokenizers` library, whose Unicode tables differ from Python's unicodedata, which 4.12.3 used: a code
    point unassigned in Python's Unicode version (U+0378, or a Unicode-15 emoji on Python 3.11) is dropped by the
    original as a control character but becomes [UNK] there. BertTokenizerLegacy is the same Python algorithm as
    4.12.3 (identical BasicTokenizer, WordpieceTokenizer and character classes) except for two later changes,
    undone here:
    - BasicTokenizer NFC-normalizes text (added after 4.12.3), which turns a decomposed "и\\u0306" into "й"; the
      original keeps the combining mark, so the word becomes [UNK].
    - With do_lower_case, 4.12.3 lowercased the text except special tokens before splitting special tokens off.
    tests/data/tokenizer_corpus.json holds the texts on which identity with 4.12.3 is proven.
    """
    _require_transformers()
    from transformers.models.bert.tokenization_bert_legacy import (
        BasicTokenizer,
        BertTokenizerLegacy,
        whitespace_tokenize,
    )

    class OriginalBasicTokenizer(BasicTokenizer):
        """The 2022 word splitting: today's steps and helpers, without the NFC normalisation added since."""

        def tokenize(self, text, never_split=None):
            keep = self.never_split | set(never_split or ())
            text = self._clean_text(text)
            if self.tokenize_chinese_chars:
                text = self._tokenize_chinese_chars(text)
            pieces = []
            for word in whitespace_tokenize(text):  # deliberately no unicodedata.normalize("NFC", text)
                pieces += self._run_split_on_punc(word if word in keep else self._fold(word), keep)
            return whitespace_tokenize(" ".join(pieces))

        def _fold(self, word):
            # strip_accents=None means "follow do_lower_case", as in BERT's original tokenizer.
            if self.do_lower_case:
                word = word.lower()
            if self.strip_accents or (self.do_lower_case and self.strip_accents is not False):
                word = self._run_strip_accents(word)
            return word

    class OriginalDistilBertTokenizer(BertTokenizerLegacy):
        model_input_names = ["input_ids", "attention_mask"]

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if self.do_basic_tokenize:
                old = self.basic_tokenizer
                self.basic_tokenizer = OriginalBasicTokenizer(
                    do_lower_case=old.do_lower_case,
                    never_split=old.never_split,
                    tokenize_chinese_chars=old.tokenize_chinese_chars,
                    strip_accents=old.strip_accents,
                )

        def tokenize(self, text, **kwargs):
            if self.do_lower_case:
                # transformers 4.12.3 PreTrainedTokenizer.tokenize: lowercase everything but the special tokens.
                specials = sorted(self.added_tokens_encoder) + list(self.all_special_tokens)
                pattern = r"(" + r"|".join(re.escape(t) for t in specials) + r")|" + r"(.+?)"
                text = re.sub(pattern, lambda m: m.groups()[0] or m.groups()[1].lower(), text)
            return super().tokenize(text, **kwargs)

    return OriginalDistilBertTokenizer
