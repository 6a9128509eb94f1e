"""Embedding jobs and collections: `ruclip-tiny embed`, `search` and `classify` on the session bundle."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ruclip_tiny.cli import main
from ruclip_tiny.demo import demo_photos
from runtime.collection import Collection, CollectionError, image_paths, text_lines


@pytest.fixture(scope="module")
def embedder(exported_bundle):
    from runtime.embedder import Embedder

    with Embedder.load(exported_bundle, backend="onnxruntime", precision="fp32") as loaded:
        yield loaded


@pytest.fixture
def photo_folder(tmp_path):
    """The demo photos, one of them again in a subfolder, plus three broken files that look like images."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for photo in demo_photos():
        shutil.copy(photo, folder / photo.name)
    shutil.copy(demo_photos()[1], folder / "sub" / "again.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a picture")
    (folder / "sub" / "cut.jpg").write_bytes(demo_photos()[0].read_bytes()[:2000])
    (folder / "readme.txt").write_text("ignored: not an image suffix")
    return folder


def test_directories_are_walked_recursively_in_sorted_order(photo_folder):
    paths = image_paths([str(photo_folder)])
    assert paths == sorted(paths)
    assert photo_folder / "sub" / "again.jpg" in paths and photo_folder / "readme.txt" not in paths
    assert image_paths([str(photo_folder / "*.jpg")]) == sorted(photo_folder.glob("*.jpg"))
    with pytest.raises(CollectionError, match="no such file or directory"):
        image_paths([str(photo_folder / "missing")])


def test_broken_files_are_reported_by_name_and_never_shift_rows(photo_folder, embedder, tmp_path, capsys):
    out = tmp_path / "photos.npz"
    assert main(["embed", str(embedder.bundle.root), "--images", str(photo_folder), "--out", str(out),
                 "--backend", "onnxruntime", "--precision", "fp32"]) == 0
    summary = capsys.readouterr().out
    assert "7 images embedded, 3 failed" in summary
    collection = Collection.load(out)
    broken = {str(photo_folder / name) for name in ("empty.jpg", "notes.jpg", "sub/cut.jpg")}
    assert set(collection.failed_ids) == broken and all(name in summary for name in broken)
    assert len(collection.failed_errors) == 3 and all(collection.failed_errors)
    direct = embedder.encode_images(collection.ids)
    np.testing.assert_allclose(collection.embeddings, direct, atol=1e-6)  # row i is ids[i]
    assert collection.metadata["synthetic"] is True and collection.metadata["precision"] == "fp32"


def test_parquet_holds_the_same_columns(photo_folder, embedder, tmp_path):
    pytest.importorskip("pyarrow", reason="parquet output needs the parquet extra (pyarrow)")
    out = tmp_path / "photos.parquet"
    assert main(["embed", str(embedder.bundle.root), "--images", str(photo_folder), "--out", str(out)]) == 0
    parquet = Collection.load(out)
    npz_path = tmp_path / "photos.npz"
    main(["embed", str(embedder.bundle.root), "--images", str(photo_folder), "--out", str(npz_path)])
    npz = Collection.load(npz_path)
    assert parquet.ids == npz.ids and parquet.failed_ids == npz.failed_ids
    np.testing.assert_array_equal(parquet.embeddings, npz.embeddings)


def test_texts_are_embedded_by_line_and_truncation_is_reported(embedder, tmp_path, capsys):
    texts = tmp_path / "captions.txt"
    long = " ".join(["очень длинная подпись"] * 60)
    texts.write_text(f"кошка\n\n{long}\nракета\n", encoding="utf-8")
    out = tmp_path / "texts.npz"
    assert main(["embed", str(embedder.bundle.root), "--texts", str(texts), "--out", str(out)]) == 0
    assert "3 texts embedded, 0 failed, 1 texts cut at 77 tokens, 1 blank lines skipped" in capsys.readouterr().out
    collection = Collection.load(out)
    assert collection.ids == ["1", "3", "4"] and collection.metadata["truncated_ids"] == ["3"]
    assert collection.texts == [line for line in text_lines(texts) if line]
    np.testing.assert_allclose(collection.embeddings, embedder.encode_texts(collection.texts), atol=1e-6)


def test_search_by_image_returns_that_image_first_and_text_ranking_matches_the_embedder(
    photo_folder, embedder, tmp_path, capsys
):
    out = tmp_path / "photos.npz"
    main(["embed", str(embedder.bundle.root), "--images", str(photo_folder), "--out", str(out)])
    collection = Collection.load(out)
    for path in collection.ids[:3]:
        assert collection.rank(embedder.encode_images([path])[0], top=1)[0][0] == path
    query = "чашка кофе"
    scores = embedder.encode_images(collection.ids) @ embedder.encode_texts([query])[0]
    expected = [collection.ids[i] for i in np.argsort(-scores, kind="stable")[:5]]
    capsys.readouterr()
    assert main(["search", str(out), query, "--top", "5"]) == 0
    printed = [line.split()[-1] for line in capsys.readouterr().out.strip().splitlines()]
    assert printed == expected


def test_classify_prints_a_ranked_table(embedder, capsys):
    photo = str(demo_photos()[0])
    assert main(["classify", str(embedder.bundle.root), photo, "--labels", "кошка,ракета,диаграмма"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == photo and len(lines) == 4
    probabilities = [float(line.split()[-1]) for line in lines[1:]]
    assert probabilities == sorted(probabilities, reverse=True) and abs(sum(probabilities) - 1) < 1e-3
    expected = embedder.classify([photo], ["кошка", "ракета", "диаграмма"])[0]
    np.testing.assert_allclose(sorted(probabilities, reverse=True), np.sort(expected)[::-1], atol=1e-4)


def test_bad_output_name_and_missing_collection_are_clear_errors(embedder, tmp_path, capsys):
    assert main(["embed", str(embedder.bundle.root), "--texts", __file__, "--out", str(tmp_path / "x.csv")]) == 2
    assert "use a .npz or .parquet" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "none.npz"), "кошка"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85"])
def test_text_lines_split_on_newlines_only_so_ids_are_line_numbers(tmp_path, separator):
    path = tmp_path / "captions.txt"
    path.write_bytes(f"кошка\r\nсобака{separator}на диване\n\nракета\nпоследняя".encode())
    lines = text_lines(path)
    assert lines == ["кошка", f"собака{separator}на диване", "", "ракета", "последняя"]
    assert lines[5 - 1] == "последняя"  # id "5" is line 5, as an editor numbers it


def test_text_lines_final_newline_adds_no_empty_text_and_a_lone_cr_stays_inside_its_line(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_bytes("один\nдва\rтри\n".encode())
    assert text_lines(path) == ["один", "два\rтри"]
    path.write_bytes(b"")
    assert text_lines(path) == []


def test_text_lines_errors_name_the_option_and_the_file(tmp_path):
    with pytest.raises(CollectionError, match="--labels-file .*missing.txt: no such file"):
        text_lines(tmp_path / "missing.txt", "--labels-file")
    with pytest.raises(CollectionError, match="--texts .*: cannot be read"):
        text_lines(tmp_path)
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(CollectionError, match="not UTF-8"):
        text_lines(tmp_path / "latin1.txt")


def test_embed_texts_gives_one_row_per_line_when_lines_hold_unicode_separators(embedder, tmp_path):
    texts = tmp_path / "captions.txt"
    lines = ["кошка", "собака\u2028на диване", "ракета\x0cв небе", "чашка\x85кофе", "монеты"]
    texts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "texts.npz"
    assert main(["embed", str(embedder.bundle.root), "--texts", str(texts), "--out", str(out)]) == 0
    collection = Collection.load(out)
    assert collection.ids == ["1", "2", "3", "4", "5"]
    np.testing.assert_allclose(collection.embeddings, embedder.encode_texts(lines), atol=1e-6)


def test_classify_answers_every_good_image_and_lists_the_broken_ones(photo_folder, embedder, capsys):
    labels = ["кошка", "ракета", "диаграмма"]
    assert main(["classify", str(embedder.bundle.root), str(photo_folder), "--labels", ",".join(labels)]) == 0
    out = capsys.readouterr().out
    good = [path for path in image_paths([str(photo_folder)]) if path.name not in ("empty.jpg", "notes.jpg", "cut.jpg")]
    expected = embedder.classify(good, labels)
    for path, row in zip(good, expected):
        block = out.split(f"{path}\n", 1)[1].splitlines()[:3]
        printed = {line.split()[0]: float(line.split()[1]) for line in block}
        assert printed == pytest.approx(dict(zip(labels, row.tolist())), abs=1e-4)
    assert "7 images classified, 3 failed" in out
    for name in ("empty.jpg", "notes.jpg", "sub/cut.jpg"):
        assert f"failed: {photo_folder / name}: " in out


def test_strict_exits_1_when_an_item_failed_and_0_when_none_did(photo_folder, embedder, tmp_path, capsys):
    root = str(embedder.bundle.root)
    out = tmp_path / "photos.npz"
    assert main(["embed", root, "--images", str(photo_folder), "--out", str(out), "--strict"]) == 1
    assert len(Collection.load(out).failed_ids) == 3  # still written, failures listed
    good = [str(photo) for photo in demo_photos()]
    assert main(["embed", root, "--images", *good, "--out", str(out), "--strict"]) == 0
    assert main(["classify", root, str(photo_folder), "--labels", "кошка,ракета", "--strict"]) == 1
    assert main(["classify", root, *good, "--labels", "кошка,ракета", "--strict"]) == 0
    capsys.readouterr()
