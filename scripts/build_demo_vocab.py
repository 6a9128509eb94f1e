"""Build the shipped demo tokenizer: a cased Russian WordPiece vocabulary trained on scripts/data/demo_corpus_ru.txt.

The published model's tokenizer (DeepPavlov/distilrubert-tiny-cased-conversational-v1) cannot be shipped, so the
project carries this small stand-in, laid out like a BERT vocabulary, for tests and demos. Deterministic: running
it twice writes byte-identical files.

    python scripts/build_demo_vocab.py [--corpus PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
import heapq
import json
import string
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO_ROOT / "scripts" / "data" / "demo_corpus_ru.txt"
DEFAULT_OUT = REPO_ROOT / "ruclip_tiny" / "assets" / "tokenizer"

# Upper bound on the vocabulary; the corpus is small, so training usually runs out of frequent pairs first.
TARGET_VOCAB_SIZE = 6000
# A pair seen once is one word's spelling, not a reusable piece.
MIN_PAIR_FREQUENCY = 2
# The model's embedding table has 30522 rows: every id must stay below that.
EMBEDDING_ROWS = 30522

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
# BERT's layout: [PAD]=0, 99 unused slots, then [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103.
HEAD = [PAD] + [f"[unused{i}]" for i in range(1, 100)] + [UNK, CLS, SEP, MASK]

DEMO_MARKER_KEY = "ruclip_tiny_synthetic_demo"
DEMO_MARKER = (
    "ruclip-tiny synthetic demo vocabulary, built by scripts/build_demo_vocab.py from scripts/data/demo_corpus_ru.txt. "
    "It is NOT the published model's tokenizer: embeddings of a real checkpoint are meaningless with it."
)

CYRILLIC = "".join(chr(c) for c in range(ord("А"), ord("я") + 1)) + "Ёё"  # А..я holds Й/й; Ё/ё live outside it
LATIN = string.ascii_letters
DIGITS = string.digits
# Punctuation and symbols of ordinary Russian text. BERT splits punctuation off every word, but symbols such as
# № ° ₽ are not punctuation to it and stay inside words, so they also need "##" forms.
SYMBOLS = string.punctuation + "«»„“”‘’—–‑…№°₽€£¥§•·×÷±²³©®™"


def is_bert_punctuation(char: str) -> bool:
    """BERT's punctuation test: ASCII punctuation or any Unicode P* category; such a char is always its own token."""
    return char in string.punctuation or unicodedata.category(char).startswith("P")


def initial_alphabet() -> list[str]:
    """Every character the vocabulary must know even if the corpus never shows it, sorted by code point."""
    return sorted(set(CYRILLIC + LATIN + DIGITS + SYMBOLS))


def corpus_words(corpus_lines: list[str]) -> Counter[str]:
    """Word counts after exactly the splitting the BERT tokenizer applies (cased, accents kept)."""
    from tokenizers import normalizers, pre_tokenizers

    # Cased and accent-preserving, so that ё and й (whose NFD forms carry a combining mark) survive as themselves.
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
    )
    splitter = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for line in corpus_lines:
        counts.update(word for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(line)))
    return counts


def merge_symbols(left: str, right: str) -> str:
    """Join two WordPiece symbols: "ко" + "##т" -> "кот", "##о" + "##т" -> "##от"."""
    return left + right.removeprefix("##")


def train_pieces(corpus_lines: list[str]) -> list[str]:
    """Multi-character pieces in the order WordPiece training (frequency-ranked merges, as tokenizers' WordPieceTrainer
    does) creates them.

    Done here rather than with tokenizers' WordPieceTrainer because that trainer breaks ties between equally frequent
    pairs by ids it assigns in hash-map order, so two runs give different vocabularies; here ties go to the
    lexicographically smaller pair, which makes the build reproducible byte for byte.
    """
    counts = corpus_words(corpus_lines)
    words = sorted(counts)
    freqs = [counts[w] for w in words]
    # Each word as symbols: first char bare, the rest with the continuation prefix.
    symbols = [[w[0]] + ["##" + c for c in w[1:]] for w in words]

    pair_counts: Counter[tuple[str, str]] = Counter()
    pair_words: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, syms in enumerate(symbols):
        for pair in zip(syms, syms[1:]):
            pair_counts[pair] += freqs[i]
            pair_words[pair].add(i)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    pieces: list[str] = []
    seen: set[str] = set()
    budget = TARGET_VOCAB_SIZE - len(HEAD)
    while heap and len(pieces) < budget:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg_count:
            continue  # stale heap entry: the pair's count changed after it was pushed
        if -neg_count < MIN_PAIR_FREQUENCY:
            break
        merged = merge_symbols(*pair)
        touched: set[tuple[str, str]] = set()
        for i in sorted(pair_words.pop(pair)):
            old = symbols[i]
            for p in zip(old, old[1:]):
                pair_counts[p] -= freqs[i]
                pair_words[p].discard(i)
                touched.add(p)
            new: list[str] = []
            j = 0
            while j < len(old):
                if j + 1 < len(old) and (old[j], old[j + 1]) == pair:
                    new.append(merged)
                    j += 2
                else:
                    new.append(old[j])
                    j += 1
            symbols[i] = new
            for p in zip(new, new[1:]):
                pair_counts[p] += freqs[i]
                pair_words[p].add(i)
                touched.add(p)
        for p in sorted(touched):
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
            else:
                pair_counts.pop(p, None)
                pair_words.pop(p, None)
        pair_counts.pop(pair, None)
        if merged not in seen:
            seen.add(merged)
            pieces.append(merged)
    return pieces


def corpus_characters(corpus_lines: list[str]) -> set[str]:
    """Characters that occur in the corpus and can be part of a BERT token (no whitespace, control or CJK spacing)."""
    chars = set()
    for line in corpus_lines:
        for char in line:
            if not char.isspace() and not unicodedata.category(char).startswith("C"):
                chars.add(char)
    return chars


def build_vocabulary(corpus_lines: list[str]) -> list[str]:
    """The full vocabulary, id = position: BERT head, single characters, their "##" forms, then trained pieces."""
    chars = sorted(set(initial_alphabet()) | corpus_characters(corpus_lines))
    # Every non-punctuation char gets a "##" form so a word with an unusual letter mid-word (ЕЁ, ПОДЪЁМ) does not
    # collapse into [UNK]; punctuation never occurs mid-word after BERT's splitting.
    continuations = ["##" + c for c in chars if not is_bert_punctuation(c)]
    pieces = train_pieces(corpus_lines)
    vocabulary = list(HEAD)
    seen = set(vocabulary)
    for token in chars + continuations + pieces:
        if token not in seen:
            seen.add(token)
            vocabulary.append(token)
    if len(vocabulary) >= EMBEDDING_ROWS:
        raise SystemExit(f"vocabulary has {len(vocabulary)} entries; it must stay below {EMBEDDING_ROWS}")
    return vocabulary


def tokenizer_config() -> dict:
    """tokenizer_config.json as transformers 4.12.3's DistilBertTokenizer.from_pretrained reads it."""
    return {
        "do_lower_case": False,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "model_max_length": 512,
        "tokenizer_class": "DistilBertTokenizer",
        "unk_token": UNK,
        "sep_token": SEP,
        "pad_token": PAD,
        "cls_token": CLS,
        "mask_token": MASK,
        DEMO_MARKER_KEY: DEMO_MARKER,
    }


def special_tokens_map() -> dict:
    return {"unk_token": UNK, "sep_token": SEP, "pad_token": PAD, "cls_token": CLS, "mask_token": MASK}


def write_text(path: Path, text: str) -> None:
    # newline="\n": byte-identical output on every platform.
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def build(corpus: Path, out: Path) -> list[str]:
    """Train on `corpus` and write vocab.txt, tokenizer_config.json and special_tokens_map.json into `out`."""
    lines = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    vocabulary = build_vocabulary(lines)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "vocab.txt", "".join(token + "\n" for token in vocabulary))
    write_text(out / "tokenizer_config.json", json.dumps(tokenizer_config(), ensure_ascii=False, indent=2) + "\n")
    write_text(out / "special_tokens_map.json", json.dumps(special_tokens_map(), ensure_ascii=False, indent=2) + "\n")
    return vocabulary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="UTF-8 text, one sentence per line")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory to write the tokenizer files into")
    args = parser.parse_args(argv)
    vocabulary = build(args.corpus, args.out)
    print(f"wrote {args.out} ({len(vocabulary)} entries)")


if __name__ == "__main__":
    main()
