"""Tests of the runtime's fast tokenizer (runtime/tokenizer/): the reference tokenizer's ids, without torch.

Identity is proven against the ORIGINAL 2022 tokenizer on tests/data/tokenizer_corpus.json (the arrays in
tests/data/legacy_expectations.npz; no transformers needed), and against the reference tokenizer
(ruclip_tiny.tokenizer, needs transformers) on a generated stress set that covers every class of character on which
the Rust ``tokenizers`` tables and Python's unicodedata disagree, on the cased demo vocabulary and on directories
that lowercase, strip accents, skip CJK splitting, place special tokens elsewhere or add tokens.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ruclip_tiny.errors import TokenizerError
from ruclip_tiny.spec import MAX_TEXT_LENGTH
from runtime.tokenizer import FastTokenizer
from tests.legacy_inputs import DEMO_TOKENIZER_DIR, EXPECTATIONS, TOKENIZER_CORPUS, corpus_sha256
from tests.ruclip_tiny.test_tokenizer import CUSTOM_VOCAB, write_tokenizer_dir

REPO_ROOT = Path(__file__).resolve().parents[2]

# Characters on which the two libraries' Unicode tables disagree (tokenizers 0.23 vs Python 3.11's unicodedata
# 14.0), or that the original treats specially; each goes into the stress set alone, inside a word and between words.
NAMED_CHARACTERS = {
    "unassigned (Cn)": ["\u0378", "\u0530", "\ufdd0", "\uffff", "\U0001fae8", "\U0001f6dd", "\U000e0080", "\U00050000",
                        "\U0010ffff", "\ufa6e", "\U0002a6e0"],
    "lone surrogate (Cs)": ["\ud800", "\udbff", "\udc00", "\udfff"],
    "control (Cc)": ["\x00", "\x07", "\x0b", "\x0c", "\x1b", "\x1c", "\x1f", "\x7f", "\x85", "\x9f"],
    "format (Cf)": ["\u00ad", "\u061c", "\u180e", "\u200b", "\u200d", "\u2060", "\ufeff", "\u0890", "\u08e2",
                    "\U000110cd", "\U00013430", "\U000e0001"],
    "private use (Co)": ["\ue000", "\uf8ff", "\U000f0000", "\U00100000"],
    "replacement": ["\ufffd"],
    "whitespace": ["\t", "\n", "\r", "\u00a0", "\u1680", "\u2000", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f",
                   "\u3000"],
    "punctuation newer than the Rust tables": ["\u061d", "\u09fd", "\u2e43", "\u2e4f", "\u2e55", "\u2e5c", "\u2e5d",
                                               "\U00010ead", "\U00011b00"],
    "punctuation": ["!", "/", ":", "@", "[", "`", "{", "~", "\u00a1", "\u00bf", "\u2014", "\u00ab", "\u3001", "$",
                    "^", "+", "\u00a7"],
    "letter that Rust splits (category changed)": ["\u166d", "\U000111c9"],
    "CJK": ["\u4e00", "\u9fff", "\u3400", "\U00020000", "\U0002b820", "\U0002b91f", "\U0002b920", "\uf900",
            "\U0002f800", "\u3042", "\uac00"],
    "combining and accents": ["\u0301", "\u0306", "\u0308", "\u20dd", "\u07fd", "\u1734", "\U00011938", "\u0f39",
                              "e\u0301", "\u0439", "\u0451", "\u0419", "\u00c5", "\u212b", "\u2126"],
    "case": ["\u03a3", "\u03c3", "\u03c2", "\u0130", "\u00df", "\u1e9e", "\ufb01", "\u0149", "\u01c5", "\u1f88"],
    "symbols": ["\u20bd", "\u2116", "\u00b0", "\U0001f600", "\U0001f408", "\U0001f44d\U0001f3fd",
                "\U0001f469\u200d\U0001f4bb", "\u2764\ufe0f", "\U0001f1f7\U0001f1fa"],
}
SPECIAL_TEXTS = [
    "[CLS]", "[SEP] кот", "кот[MASK]собака", "[CLS][SEP][PAD][UNK][MASK]", "[CLS", "MASK]", "[cls]", "[ CLS ]",
    "[CL\x00S]", "x[CL\x00S]", "[CL\u0378S]x", "\u4e2d[CL\u200bS]", "[CLS]\u0301", "[MA\ud800SK] кот", "[[CLS]]",
    "Кот [PAD] " * 30,
]


def stress_texts(light: bool = False) -> list[str]:
    """A deterministic stress set (about 2,700 texts): named characters, a sample of every 128-code-point block of
    planes 0-3 and 14 and a few from the rest, special-token strings, and seeded random mixes of Cyrillic, Latin,
    digits, punctuation, spaces, emoji, CJK, combining marks, controls and unassigned code points, some long enough
    to be truncated. ``light``: every fourth block sample and no mix over 200 characters (about 900 texts)."""
    rng = random.Random(20220412)
    texts = []
    for chars in NAMED_CHARACTERS.values():
        for c in chars:
            texts += [c, f"Кот{c}ёж", f"кот {c} ёж", f"{c}{c}a{c}.", f"[CLS]{c}[SEP]"]
        texts.append(" ".join(chars) + " " + "".join(chars))
    blocks = [*range(0, 0x32000, 128), *range(0xE0000, 0xE0200, 128), *range(0x32000, 0x110000, 0x8000)]
    for n, start in enumerate(blocks):
        a, b = (chr(start + rng.randrange(128)) for _ in range(2))
        if not light or n % 4 == 0:
            texts.append(f"Кот{a}ёж {b} x{a}{b}, {a}")
    texts += SPECIAL_TEXTS
    pools = [
        ("cyrillic", [chr(c) for c in range(0x410, 0x450)] + ["ё", "Ё"], 30),
        ("latin", list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"), 12),
        ("digits", list("0123456789"), 4),
        ("punctuation", list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~«»—–…№"), 8),
        ("spaces", [" ", " ", " ", "  ", "\t", "\n", "\u00a0", "\u2028", "\u3000", "\r\n"], 14),
        ("emoji", ["\U0001f600", "\U0001f408", "\U0001f44d\U0001f3fd", "\U0001fae8", "\U0001f979", "\u2764\ufe0f"], 3),
        ("cjk", ["\u4e2d", "\u6587", "\u5b57", "\U0002b820", "\U0002b920", "\uf900", "\u3042"], 3),
        ("combining", ["\u0301", "\u0306", "\u0308", "\u20dd", "\u07fd", "\u1734"], 3),
        ("controls", ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\u200b", "\ufeff", "\u00ad", "\u0890", "\ud800",
                      "\ue000", "\ufffd"], 2),
        ("unassigned", ["\u0378", "\uffff", "\U000e0080", "\U00050000"], 2),
        ("mismatches", ["\u166d", "\U000111c9", "\u2e55", "\u061d", "\U0002b820"], 2),
        ("specials", ["[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "[CLS", "MASK]"], 1),
        ("case", ["\u03a3", "\u0130", "\u00df", "\u1e9e", "\u0149"], 2),
    ]
    weights = [w for _, _, w in pools]
    for n in range(400):
        length = rng.choice([1, 3, 10, 40, 120, 400]) if n % 4 else rng.randrange(0, 25)
        chosen = rng.choices(pools, weights=weights, k=length)
        text = "".join(rng.choice(chars) for _, chars, _ in chosen)
        if not light or len(text) <= 200:
            texts.append(text)
    return texts


@pytest.fixture(scope="module")
def fast():
    return FastTokenizer.from_directory(DEMO_TOKENIZER_DIR)


@pytest.fixture(scope="module")
def load_reference():
    pytest.importorskip("transformers", reason="the reference tokenizer needs transformers (the export extra)")
    from ruclip_tiny.tokenizer import load_tokenizer

    return load_tokenizer


@pytest.fixture(scope="module")
def stress():
    return stress_texts()


@pytest.fixture(scope="module")
def light_stress():
    texts = stress_texts(light=True)
    assert len(texts) >= 500
    return texts


def copy_demo(path: Path, config: dict) -> Path:
    path.mkdir(parents=True)
    for name in ("vocab.txt", "special_tokens_map.json"):
        shutil.copy(DEMO_TOKENIZER_DIR / name, path / name)
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


def assert_same_encoding(fast_tokenizer, reference, texts, check_truncation=True):
    encoded = fast_tokenizer.encode(texts)
    ids, mask, truncated = encoded.input_ids, encoded.attention_mask, encoded.truncated
    ref_ids, ref_mask = reference(texts)
    bad = np.flatnonzero((ids != ref_ids).any(axis=1) | (mask != ref_mask).any(axis=1))
    assert bad.size == 0, f"{bad.size} of {len(texts)} texts differ, first: {texts[bad[0]]!r}"
    assert ids.dtype == mask.dtype == np.int64
    if check_truncation:  # the reference tokenizes every text a second time for this
        assert truncated == reference.truncated_indices(texts)


# --- identity -------------------------------------------------------------------------------------------------


def test_corpus_matches_the_original_2022_tokenizer(fast):
    corpus = json.loads(TOKENIZER_CORPUS.read_text(encoding="utf-8"))
    expected = np.load(EXPECTATIONS)
    assert corpus_sha256(corpus) == str(expected["corpus_sha256"])
    ids, mask = fast(corpus)
    assert ids.shape == mask.shape == (len(corpus), MAX_TEXT_LENGTH) and ids.dtype == mask.dtype == np.int64
    np.testing.assert_array_equal(ids, expected["corpus_input_ids"].astype(np.int64))
    np.testing.assert_array_equal(mask, expected["corpus_attention_mask"].astype(np.int64))


def test_corpus_truncation_report_matches_the_reference(fast, load_reference):
    corpus = json.loads(TOKENIZER_CORPUS.read_text(encoding="utf-8"))
    truncated = fast.encode(corpus).truncated
    assert truncated == load_reference().truncated_indices(corpus)
    assert len(truncated) >= 5


def test_stress_set_matches_the_reference(fast, load_reference, stress):
    assert len(stress) >= 500
    assert_same_encoding(fast, load_reference(), stress)
    assert fast.encode(stress).truncated, "the stress set must hold texts that are cut"


@pytest.mark.parametrize(
    "config",
    [
        {"do_lower_case": True},  # lowercasing and accent stripping, as 4.12.3 did both
        {"do_lower_case": True, "strip_accents": False},
        {"do_lower_case": False, "strip_accents": True},
        {"do_lower_case": False, "tokenize_chinese_chars": False},
        {},  # silent config: DistilBertTokenizer's defaults (lowercase)
    ],
    ids=["lowercase", "lowercase-keep-accents", "strip-accents-only", "no-cjk-split", "silent"],
)
def test_other_settings_match_the_reference(tmp_path, load_reference, light_stress, config):
    path = copy_demo(tmp_path / "tok", config)
    fast_tokenizer = FastTokenizer.from_directory(path)
    reference = load_reference(path)
    assert fast_tokenizer.do_lower_case == reference.do_lower_case
    assert_same_encoding(fast_tokenizer, reference, light_stress, check_truncation=False)


def test_every_character_the_tables_disagree_on_matches_the_reference(fast, load_reference):
    from runtime.tokenizer.unicode_tables import rust_mismatches

    characters = sorted(rust_mismatches(True))
    assert characters, "tokenizers and unicodedata agree on everything now: review runtime/tokenizer/unicode_tables.py"
    texts = [t for cp in characters for t in (chr(cp), f"Кот{chr(cp)}ёж", f"a {chr(cp)}{chr(cp)} b")]
    assert_same_encoding(fast, load_reference(), texts)


# --- the behaviours that identity rests on --------------------------------------------------------------------


def test_unassigned_code_points_are_dropped_not_unknown(fast):
    # Python 3.11's unicodedata has U+0378 and the Unicode 15 emoji U+1FAE8 as unassigned: the original drops them
    # as control characters; tokenizers alone would give [UNK].
    kot = fast(["кот"])[0]
    assert fast(["\u0378кот"])[0].tolist() == fast(["кот\U0001fae8"])[0].tolist() == kot.tolist()
    assert fast.backend.encode("\u0378").ids[:3] == [fast.cls_id, fast.unk_id, fast.sep_id]  # the bare library


def test_lone_surrogates_are_dropped(fast):
    assert fast(["ко\ud800т"])[0].tolist() == fast(["кот"])[0].tolist()


def test_character_renamed_for_rust_still_matches_a_vocabulary_entry(tmp_path, load_reference):
    # U+166D is a symbol to Python 3.11 but punctuation to the Rust tables: it is renamed in the text and in
    # vocab.txt alike, so a word holding it is still found whole.
    path = write_tokenizer_dir(tmp_path / "renamed", [*CUSTOM_VOCAB, "\u166d", "кот\u166d", "##\u166dа"],
                               {"do_lower_case": False})
    texts = ["кот\u166d", "\u166d", "кот\u166dа", "собака\u166d", "и \u166d\u166d"]
    fast_tokenizer = FastTokenizer.from_directory(path)
    assert_same_encoding(fast_tokenizer, load_reference(path), texts)
    assert fast_tokenizer(["кот\u166d"])[0][0, 1] == len(CUSTOM_VOCAB) + 1


def test_capital_sigma_lowercases_one_character_at_a_time(tmp_path, load_reference):
    # 4.12.3 lowercased character by character, so a word-final capital sigma became "σ", never the "ς" that
    # str.lower() gives it.
    path = write_tokenizer_dir(tmp_path / "greek", [*CUSTOM_VOCAB, "οδοσ", "οδος", "σ", "ς"], {"do_lower_case": True})
    texts = ["ΟΔΟΣ", "ΟΔΟΣ.", "οδος", "Σ", "ΑΣ Σ", "[CLS]ΟΔΟΣ"]
    fast_tokenizer = FastTokenizer.from_directory(path)
    assert_same_encoding(fast_tokenizer, load_reference(path), texts)
    assert fast_tokenizer(["ΟΔΟΣ"])[0][0, 1] == len(CUSTOM_VOCAB)


def test_special_ids_come_from_the_vocabulary(tmp_path, load_reference):
    path = write_tokenizer_dir(tmp_path / "custom", CUSTOM_VOCAB, {"do_lower_case": False})
    fast_tokenizer = FastTokenizer.from_directory(path)
    assert (fast_tokenizer.cls_id, fast_tokenizer.sep_id, fast_tokenizer.pad_id, fast_tokenizer.unk_id) == (7, 3, 9, 5)
    assert fast_tokenizer.vocab_size == len(CUSTOM_VOCAB)
    ids, mask = fast_tokenizer(["Кот и собака", "пёс", ""])
    assert ids[0, :6].tolist() == [7, 8, 4, 1, 3, 9] and (ids[0, 5:] == 9).all()
    assert ids[1, :3].tolist() == [7, 5, 3]
    assert_same_encoding(fast_tokenizer, load_reference(path), ["Кот и собака", "пёс", "кот[MASK]и", "", " "])


def test_added_and_extra_special_tokens_match_the_reference(tmp_path, load_reference):
    # An added token and an extra special token outside vocab.txt, and a vocabulary without [MASK] (appended).
    vocab = [t for t in CUSTOM_VOCAB if t != "[MASK]"] + ["<", ">"]
    path = write_tokenizer_dir(tmp_path / "added", vocab, {"do_lower_case": True})
    (path / "added_tokens.json").write_text(json.dumps({"<кот>": len(vocab), "<ЙОД>": len(vocab) + 1}))
    (path / "special_tokens_map.json").write_text(json.dumps({"additional_special_tokens": ["<e1>"]}))
    texts = ["<КОТ> и <кот>", "<ЙОД> <йод> <иод>", "кот [MASK] <e1> <E1>", "Кот<кот>[CLS]", "<ко\u200bт>", ""]
    fast_tokenizer = FastTokenizer.from_directory(path)
    reference = load_reference(path)
    assert fast_tokenizer.vocab_size == reference.vocab_size == len(vocab) + 4
    assert_same_encoding(fast_tokenizer, reference, texts)


def test_truncation_indices_and_lengths(fast, load_reference):
    fits = " ".join(["кот"] * (MAX_TEXT_LENGTH - 2))
    too_long = " ".join(["кот"] * (MAX_TEXT_LENGTH - 1))
    texts = ["кот", fits, too_long, "Кошка спит на диване. " * 100, "[MASK] " * 80, ""]
    encoded = fast.encode(texts)
    assert encoded.truncated == [2, 3, 4] == load_reference().truncated_indices(texts)
    np.testing.assert_array_equal(encoded.lengths, encoded.attention_mask.sum(axis=1))
    assert encoded.lengths.tolist() == [3, 77, 77, 77, 77, 2]
    assert (encoded.input_ids[[1, 2, 3, 4], -1] == fast.sep_id).all()
    ids, mask = encoded.trimmed()
    assert ids.shape == mask.shape == (len(texts), 77)
    ids, mask = fast.encode(["кот", ""]).trimmed()
    assert ids.tolist() == [fast(["кот"])[0][0, :3].tolist(), [fast.cls_id, fast.sep_id, fast.pad_id]]


def test_empty_batch(fast):
    encoded = fast.encode([])
    assert encoded.input_ids.shape == encoded.attention_mask.shape == (0, MAX_TEXT_LENGTH)
    assert encoded.truncated == [] and encoded.lengths.shape == (0,)


# --- bad input --------------------------------------------------------------------------------------------------


def test_bare_string_is_refused(fast):
    with pytest.raises(TypeError, match=r"single str.*pass \[text\]"):
        fast("кот")


def test_non_string_item_is_named_by_index(fast):
    with pytest.raises(TypeError, match=r"texts\[2\] is int"):
        fast(["кот", "собака", 3])
    with pytest.raises(TypeError, match=r"texts\[0\] is bytes"):
        fast.encode([b"kot"])


def test_directory_without_vocab(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(TokenizerError, match="has no vocab.txt") as err:
        FastTokenizer.from_directory(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_missing_directory_and_file_instead_of_directory(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        FastTokenizer.from_directory(tmp_path / "no" / "such")
    vocab = write_tokenizer_dir(tmp_path / "t", CUSTOM_VOCAB) / "vocab.txt"
    with pytest.raises(TokenizerError, match="is a file"):
        FastTokenizer.from_directory(vocab)


@pytest.mark.parametrize("special", ["[CLS]", "[SEP]", "[PAD]", "[UNK]"])
def test_vocabulary_lacking_a_special_token(tmp_path, special):
    path = write_tokenizer_dir(tmp_path / "lacking", [t for t in CUSTOM_VOCAB if t != special])
    with pytest.raises(TokenizerError, match="lacks the special token") as err:
        FastTokenizer.from_directory(path)
    assert special in str(err.value)


def test_broken_config_and_unsupported_settings(tmp_path):
    path = write_tokenizer_dir(tmp_path / "broken", CUSTOM_VOCAB)
    (path / "tokenizer_config.json").write_text("{do_lower_case: no", encoding="utf-8")
    with pytest.raises(TokenizerError, match="tokenizer_config.json .* not valid JSON"):
        FastTokenizer.from_directory(path)
    (path / "tokenizer_config.json").write_text(json.dumps({"do_basic_tokenize": False}), encoding="utf-8")
    with pytest.raises(TokenizerError, match="do_basic_tokenize=False"):
        FastTokenizer.from_directory(path)


def test_vocabulary_larger_than_embedding_table(tmp_path):
    too_big = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(30522 - 5 + 1)]
    with pytest.raises(TokenizerError, match="30523 entries.*30522"):
        FastTokenizer.from_directory(write_tokenizer_dir(tmp_path / "big", too_big))


# --- deployment -------------------------------------------------------------------------------------------------


def test_runs_without_torch_or_transformers():
    code = (
        "import sys\n"
        "from runtime.tokenizer import FastTokenizer\n"
        f"t = FastTokenizer.from_directory({str(DEMO_TOKENIZER_DIR)!r})\n"
        "ids, mask = t(['Кот спит', '\\u0378 кот', '[MASK] ко\\ud800т'])\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules, ids.shape)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "(3,", f"{MAX_TEXT_LENGTH})"]
