"""Tests of the reference tokenizer (ruclip_tiny/tokenizer.py) and the shipped demo vocabulary.

Identity with transformers 4.12.3 on tests/data/tokenizer_corpus.json is proven by the legacy-expectations test;
these tests pin the behaviour that identity rests on and every error path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ruclip_tiny.errors import TokenizerError
from ruclip_tiny.spec import MAX_TEXT_LENGTH
from ruclip_tiny.tokenizer import DEMO_TOKENIZER_DIR, load_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS = REPO_ROOT / "tests" / "data" / "tokenizer_corpus.json"
CYRILLIC = "".join(chr(c) for c in range(ord("А"), ord("я") + 1)) + "Ёё"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo():
    return load_tokenizer()


def write_tokenizer_dir(path: Path, vocab: list[str], config: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    if config is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


# A vocabulary whose special tokens sit away from BERT's usual ids.
CUSTOM_VOCAB = ["кот", "собака", "##а", "[SEP]", "и", "[UNK]", "[MASK]", "[CLS]", "Кот", "[PAD]"]


# --- encoding ---------------------------------------------------------------------------------------------------


def test_batch_is_int64_b_by_77(demo):
    ids, mask = demo(["кот", "Собака бежит по пляжу за мячом.", ""])
    assert ids.shape == mask.shape == (3, MAX_TEXT_LENGTH)
    assert ids.dtype == mask.dtype == np.int64


def test_empty_batch_is_zero_rows(demo):
    ids, mask = demo([])
    assert ids.shape == mask.shape == (0, MAX_TEXT_LENGTH)
    assert ids.dtype == mask.dtype == np.int64


def test_demo_special_ids_come_from_vocab_file(demo):
    lines = (DEMO_TOKENIZER_DIR / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert (demo.pad_id, demo.unk_id, demo.cls_id, demo.sep_id) == (0, 100, 101, 102)
    assert [lines[i] for i in (demo.pad_id, demo.unk_id, demo.cls_id, demo.sep_id)] == [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]"
    ]
    ids, _ = demo(["кот"])
    assert ids[0, 0] == 101
    assert demo.vocab_size == len(lines) < 30522


def test_custom_vocab_places_special_ids_where_the_file_does(tmp_path):
    tok = load_tokenizer(write_tokenizer_dir(tmp_path / "custom", CUSTOM_VOCAB, {"do_lower_case": False}))
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.unk_id) == (7, 3, 9, 5)
    ids, mask = tok(["Кот и собака", "пёс"])
    assert ids[0, :6].tolist() == [7, 8, 4, 1, 3, 9]
    assert (ids[0, 5:] == 9).all()
    assert ids[1, :4].tolist() == [7, 5, 3, 9]  # unknown word -> the vocabulary's [UNK]
    assert mask[0, :5].tolist() == [1] * 5 and not mask[0, 5:].any()
    assert tok.vocab_size == len(CUSTOM_VOCAB)
    assert not tok.is_demo


def test_config_without_do_lower_case_lowercases_like_the_original(tmp_path):
    # DistilBertTokenizer's default is do_lower_case=True; the original applied it when the config was silent.
    tok = load_tokenizer(write_tokenizer_dir(tmp_path / "silent", CUSTOM_VOCAB))
    assert tok.do_lower_case
    assert tok.tokenize("Кот") == ["кот"]


def test_uncased_added_token_matches_after_lowercasing_like_the_original(tmp_path):
    # 4.12.3 lowercased the text (sparing special tokens) BEFORE splitting added tokens off, so "<КОТ>" finds the
    # added token "<кот>"; today's tokenize would split it into "<", "кот", ">".
    path = write_tokenizer_dir(tmp_path / "added", CUSTOM_VOCAB, {"do_lower_case": True})
    (path / "added_tokens.json").write_text(json.dumps({"<кот>": len(CUSTOM_VOCAB)}), encoding="utf-8")
    tok = load_tokenizer(path)
    assert tok.tokenize("<КОТ> и <кот>") == ["<кот>", "и", "<кот>"]
    assert tok(["<КОТ> и <кот>"])[0][0, :5].tolist() == [7, 10, 4, 10, 3]
    assert tok.vocab_size == len(CUSTOM_VOCAB) + 1


def test_demo_is_cased_and_keeps_yo_and_short_i(demo):
    assert not demo.do_lower_case
    upper, lower = demo(["Ёж", "ёж"])[0]
    assert upper.tolist() != lower.tolist()
    for word in ["Ёж", "ёж", "Ёлка", "йогурт", "Йемен", "подъём", "ЕЁ", "ЙОД"]:
        ids, mask = demo([word])
        pieces = demo.convert_ids_to_tokens(ids[0][mask[0] == 1])
        assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
        assert "".join(p.removeprefix("##") for p in pieces[1:-1]) == word


def test_demo_vocabulary_covers_the_alphabet(demo):
    # Every letter, bare and as a continuation, so no ordinary Russian word collapses into [UNK].
    words = ["Щ" + CYRILLIC, CYRILLIC[::-1], "Xylophone", "Qwerty123", "№5", "25°C", "100₽", "ъЪьЬ"]
    for word in words:
        assert "[UNK]" not in demo.tokenize(word), word


def test_decomposed_short_i_stays_unknown_like_the_original(demo):
    # 4.12.3 does not NFC-normalize: "и" + combining breve is not "й", and the word has no pieces -> [UNK].
    # Today's BertTokenizerLegacy would normalize and give "йо ##д"; this pins the undone change.
    assert demo.tokenize("и\u0306од") == ["[UNK]"]
    assert demo.tokenize("йод") != ["[UNK]"]


def test_codepoint_unassigned_in_python_unicode_is_dropped_like_the_original(demo):
    # The original's _clean_text drops category C* (U+0378 is unassigned, "Cn"); a tokenizers-backed
    # tokenizer keeps it as [UNK] instead.
    assert demo(["\u0378 кот"])[0].tolist() == demo(["кот"])[0].tolist()


def test_empty_and_whitespace_text_is_cls_sep_then_padding(demo):
    ids, mask = demo(["", " \t\n\u00a0 "])
    for row, row_mask in zip(ids, mask):
        assert row[:2].tolist() == [demo.cls_id, demo.sep_id]
        assert (row[2:] == demo.pad_id).all()
        assert row_mask.tolist() == [1, 1] + [0] * (MAX_TEXT_LENGTH - 2)


def test_truncation_keeps_sep_last_and_reports_the_text(demo):
    fits = " ".join(["кот"] * (MAX_TEXT_LENGTH - 2))  # exactly 77 with [CLS] and [SEP]
    too_long = " ".join(["кот"] * (MAX_TEXT_LENGTH - 1))
    far_too_long = "Кошка спит на диване. " * 100
    texts = ["кот", fits, too_long, far_too_long]
    ids, mask = demo(texts)
    assert demo.truncated_indices(texts) == [2, 3]
    for row, row_mask in zip(ids[1:], mask[1:]):
        assert row[0] == demo.cls_id and row[-1] == demo.sep_id
        assert row_mask.all()
    kot = demo(["кот"])[0][0, 1]
    assert (ids[2, 1:-1] == kot).all()


def test_literal_special_token_strings_become_special_ids(demo):
    # The original (loaded with from_pretrained) splits special-token strings off the text even inside a word.
    ids, mask = demo(["кот[MASK]собака"])
    tokens = demo.convert_ids_to_tokens(ids[0][mask[0] == 1])
    assert tokens == ["[CLS]", "кот", "[MASK]", "собака", "[SEP]"]


def test_corpus_truncation_report_matches_encoding(demo):
    texts = json.loads(CORPUS.read_text(encoding="utf-8"))
    assert len(texts) >= 220
    ids, mask = demo(texts)
    truncated = demo.truncated_indices(texts)
    assert truncated == [i for i, t in enumerate(texts) if len(demo.tokenize(t)) > MAX_TEXT_LENGTH - 2]
    assert len(truncated) >= 5
    assert all(mask[i].all() and ids[i, -1] == demo.sep_id for i in truncated)


# --- input checking -------------------------------------------------------------------------------------------


def test_bare_string_is_refused(demo):
    with pytest.raises(TypeError, match=r"single str.*pass \[text\]"):
        demo("кот")


def test_non_string_item_is_named_by_index(demo):
    with pytest.raises(TypeError, match=r"texts\[2\] is int"):
        demo(["кот", "собака", 3])
    with pytest.raises(TypeError, match=r"texts\[0\] is bytes"):
        demo.truncated_indices([b"kot"])


# --- loading errors -------------------------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(TokenizerError, match="does not exist") as err:
        load_tokenizer(missing)
    assert str(missing) in str(err.value)


def test_file_instead_of_directory(tmp_path):
    vocab = write_tokenizer_dir(tmp_path / "t", CUSTOM_VOCAB) / "vocab.txt"
    with pytest.raises(TokenizerError, match="is a file") as err:
        load_tokenizer(str(vocab))
    assert str(vocab) in str(err.value)


def test_directory_without_vocab(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(TokenizerError, match="has no vocab.txt") as err:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_vocabulary_larger_than_embedding_table(tmp_path):
    too_big = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(30522 - 5 + 1)]
    path = write_tokenizer_dir(tmp_path / "big", too_big)
    with pytest.raises(TokenizerError, match="30523 entries.*30522") as err:
        load_tokenizer(path)
    assert str(path) in str(err.value)


def test_vocabulary_filling_the_embedding_table_exactly_loads(tmp_path):
    full = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(30522 - 5)]
    assert load_tokenizer(write_tokenizer_dir(tmp_path / "full", full)).vocab_size == 30522


def test_added_tokens_past_the_embedding_table(tmp_path):
    full = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(30522 - 5)]
    path = write_tokenizer_dir(tmp_path / "full_plus", full)
    (path / "added_tokens.json").write_text(json.dumps({"extra": 30522}), encoding="utf-8")
    with pytest.raises(TokenizerError, match="30523 ids .*30522 rows") as err:
        load_tokenizer(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("special", ["[CLS]", "[SEP]", "[PAD]", "[UNK]"])
def test_vocabulary_lacking_a_special_token(tmp_path, special):
    path = write_tokenizer_dir(tmp_path / "lacking", [t for t in CUSTOM_VOCAB if t != special])
    with pytest.raises(TokenizerError, match=r"lacks the special token") as err:
        load_tokenizer(path)
    assert str(path) in str(err.value) and special in str(err.value)


def test_vocabulary_not_utf8(tmp_path):
    path = write_tokenizer_dir(tmp_path / "latin1", CUSTOM_VOCAB)
    (path / "vocab.txt").write_bytes("\n".join(CUSTOM_VOCAB).encode("cp1251"))
    with pytest.raises(TokenizerError, match="not UTF-8") as err:
        load_tokenizer(path)
    assert str(path) in str(err.value)


def test_broken_tokenizer_config(tmp_path):
    path = write_tokenizer_dir(tmp_path / "broken", CUSTOM_VOCAB)
    (path / "tokenizer_config.json").write_text("{do_lower_case: no", encoding="utf-8")
    with pytest.raises(TokenizerError, match="tokenizer_config.json .* not valid JSON") as err:
        load_tokenizer(path)
    assert str(path) in str(err.value)


def test_hub_id_not_in_local_cache_fails_fast_without_network():
    repo_id = "ruclip-tiny-tests/no-such-tokenizer"
    start = time.monotonic()
    with pytest.raises(TokenizerError, match="local directory") as err:
        load_tokenizer(repo_id)
    assert time.monotonic() - start < 10
    assert repo_id in str(err.value)
    assert "DeepPavlov/distilrubert-tiny-cased-conversational-v1" in str(err.value)


def test_hub_id_in_local_cache_loads(tmp_path):
    # A Hugging Face cache laid out as huggingface_hub writes it, holding a copy of the demo files.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--rutok"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in DEMO_TOKENIZER_DIR.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    code = (
        "from ruclip_tiny.tokenizer import load_tokenizer\n"
        "t = load_tokenizer('someone/rutok')\n"
        "print(t.source, t.directory.name, t.is_demo, t(['кот'])[0][0, :3].tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kot = load_tokenizer()(["кот"])[0][0, 1]
    assert out.stdout.strip() == f"someone/rutok {commit} True [101, {kot}, 102]"


# --- the shipped files ----------------------------------------------------------------------------------------


def test_demo_tokenizer_config(demo):
    config = json.loads((DEMO_TOKENIZER_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["do_lower_case"] is False
    assert config["strip_accents"] is None
    assert config["tokenize_chinese_chars"] is True
    assert config["model_max_length"] == 512
    assert config["tokenizer_class"] == "DistilBertTokenizer"
    assert "synthetic demo" in config["ruclip_tiny_synthetic_demo"]
    assert demo.is_demo


def test_build_script_reproduces_shipped_vocabulary(tmp_path):
    build = load_script("build_demo_vocab")
    build.build(build.DEFAULT_CORPUS, tmp_path)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).read_bytes() == (DEMO_TOKENIZER_DIR / name).read_bytes(), name


def test_corpus_script_reproduces_committed_corpus(tmp_path):
    make = load_script("make_tokenizer_corpus")
    make.main(["--out", str(tmp_path / "corpus.json")])
    assert (tmp_path / "corpus.json").read_bytes() == CORPUS.read_bytes()


def test_import_does_not_pull_torch_or_transformers():
    code = "import sys, ruclip_tiny.tokenizer; print('torch' in sys.modules, 'transformers' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_hub_counts_as_reachable_only_when_its_port_answers_and_offline_is_not_set(monkeypatch):
    import socket

    from ruclip_tiny.tokenizer import _hub_reachable

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert _hub_reachable(timeout=2)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert not _hub_reachable(timeout=2)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert not _hub_reachable(timeout=2)  # the listener is closed: connection refused
