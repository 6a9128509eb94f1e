"""Embedder on the session's full-size bundle: torch-free, equal to the probe reference, order kept through
chunking, every input kind alike, broken images named, artifacts checked, zero-shot arithmetic exact; and, on the
fake bundle, every graph's inputs and outputs (the fused text graph's too) checked against the spec at load."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from ruclip_tiny import spec
from ruclip_tiny.errors import ImageDecodeError
from ruclip_tiny.transform import load_image
from runtime import parity
from runtime.bundle import Bundle, BundleError
from runtime.embedder import Embedder, ImageItemError, TextTruncatedWarning, l2_normalize
from tests.runtime import fake_bundle


@pytest.fixture(scope="module")
def embedder(exported_bundle):
    with Embedder.load(exported_bundle) as loaded:  # auto: onnxruntime fp32 on this CPU-only machine
        yield loaded


@pytest.fixture(scope="module")
def probe(exported_bundle):
    return parity.load_probe(Bundle.load(exported_bundle))


@pytest.fixture(scope="module")
def photos(exported_bundle, probe) -> list[Path]:
    """The probe photos in the order of the probe reference rows."""
    return [exported_bundle / "probe" / "images" / str(name) for name in probe.inputs["image_names"]]


def _light_copy(bundle: Path, target: Path, private: tuple[str, ...] = ()) -> Path:
    """A copy of ``bundle`` whose files are hard links to the original (symlinks would lead out of the copy, which
    the embedder refuses), except manifest.json and ``private`` files, which are real copies and so safe to modify
    (the session bundle is shared and must not change)."""
    shutil.copytree(bundle, target, copy_function=os.link)
    for relative in ("manifest.json", *private):
        (target / relative).unlink()
        shutil.copyfile(bundle / relative, target / relative)
    return target


def test_embedding_images_and_texts_never_imports_torch(exported_bundle, photos):
    code = textwrap.dedent(
        f"""
        import sys
        from runtime.embedder import Embedder
        with Embedder.load({str(exported_bundle)!r}, backend="onnxruntime") as embedder:
            images = embedder.encode_images({[str(p) for p in photos[:2]]!r})
            texts = embedder.encode_texts(["кошка", "ракета"])
        assert images.shape == texts.shape == (2, 768), (images.shape, texts.shape)
        print(" ".join(sorted(sys.modules)))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr
    modules = {name.split(".")[0] for name in result.stdout.split()}
    assert {"onnxruntime", "tokenizers", "PIL"} <= modules
    assert not {"torch", "timm", "transformers", "torchvision"} & modules


def test_auto_loads_onnxruntime_fp32_on_the_cpu_and_says_why(embedder, exported_bundle):
    assert (embedder.backend.name, embedder.backend.device, embedder.precision) == ("onnxruntime", "cpu", "fp32")
    assert embedder.selection.startswith("auto: onnxruntime on the CPU")
    manifest = json.loads((exported_bundle / "manifest.json").read_text())
    assert embedder.dim == 768 and embedder.synthetic is manifest["synthetic"] is True


def test_images_and_texts_equal_the_probe_reference(embedder, probe, photos):
    images = embedder.encode_images(photos, normalize=False)
    assert parity.row_cosines(images, probe.reference["image_features"]).min() >= 0.99999
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TextTruncatedWarning)
        texts = embedder.encode_texts([str(text) for text in probe.inputs["texts"]], normalize=False)
    assert parity.row_cosines(texts, probe.reference["text_features"]).min() >= 0.99999
    normalized = embedder.encode_images(photos[:1])
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(normalized, l2_normalize(images[:1]), atol=1e-6)


def test_texts_cut_at_77_tokens_are_reported(embedder, probe, exported_bundle):
    texts = [str(text) for text in probe.inputs["texts"]]
    manifest = json.loads((exported_bundle / "manifest.json").read_text())
    expected = manifest["probe"]["truncated_texts"]
    assert expected  # the probe has long texts on purpose
    with pytest.warns(TextTruncatedWarning, match=rf"{len(expected)} of {len(texts)} texts .* cut"):
        embedder.encode_texts(texts, batch_size=16)  # chunked: indices must stay global
    assert embedder.last_truncated == expected
    detailed = embedder.encode_texts_detailed(["кошка", " ".join(["кошка"] * 100)])
    assert detailed.truncated == [1] and detailed.embeddings.shape == (2, 768)


def test_trimmed_padding_gives_the_features_of_full_77_token_rows(embedder):
    texts = ["кошка", "чашка кофе", "ракета стартует с космодрома"]
    input_ids, attention_mask = embedder.tokenizer(texts)
    assert input_ids.shape == (3, 77)
    full = embedder.backend.encode_tokens(input_ids, attention_mask)
    assert parity.row_cosines(embedder.encode_texts(texts, normalize=False), full).min() >= 0.9999999


def test_chunking_keeps_rows_with_their_inputs(embedder, photos):
    items = [*photos, photos[0].read_bytes()]  # 7 items
    whole = embedder.encode_images(items, batch_size=len(items))
    chunked = embedder.encode_images(items, batch_size=2)
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    order = np.random.default_rng(0).permutation(len(items))
    shuffled = embedder.encode_images([items[i] for i in order], batch_size=3)
    np.testing.assert_allclose(shuffled, whole[order], atol=1e-6)
    texts = ["кошка", "ракета", "чашка кофе", "астронавт", "монеты"]
    np.testing.assert_allclose(embedder.encode_texts(texts, batch_size=2), embedder.encode_texts(texts), atol=1e-6)
    pixels = np.stack([embedder._transform(load_image(path)) for path in photos])
    np.testing.assert_allclose(embedder.encode_pixels(pixels, batch_size=4), embedder.encode_pixels(pixels), atol=1e-6)
    np.testing.assert_allclose(l2_normalize(embedder.encode_pixels(pixels)), whole[: len(photos)], atol=1e-6)
    assert embedder.encode_pixels(pixels[:0]).shape == (0, 768)


def test_every_input_kind_gives_the_same_embedding(embedder, photos):
    path = photos[0]
    picture = load_image(path)
    data = path.read_bytes()
    kinds = [path, str(path), data, io.BytesIO(data), picture, np.asarray(picture.convert("RGB"))]
    rows = embedder.encode_images(kinds)
    for row in rows[1:]:
        np.testing.assert_allclose(row, rows[0], atol=1e-6)


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory, photos) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("broken")
    files = {"empty": folder / "empty.jpg", "truncated": folder / "truncated.jpg", "text": folder / "notes.jpg"}
    files["empty"].write_bytes(b"")
    data = photos[0].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["text"].write_text("this is a shopping list, not a photo\n")
    return files


@pytest.mark.parametrize(
    ("kind", "reason"), [("empty", "empty"), ("truncated", "truncated"), ("text", "not an image")]
)
def test_a_broken_image_raises_naming_the_item_and_its_index(embedder, photos, broken_files, kind, reason):
    with pytest.raises(ImageDecodeError) as caught:
        embedder.encode_images([photos[0], photos[1], broken_files[kind]])
    error = caught.value
    assert isinstance(error, ImageItemError) and error.index == 2 and error.item == str(broken_files[kind])
    assert f"images[2] ({broken_files[kind]})" in str(error) and reason in str(error)


def test_partial_encoding_returns_the_good_images_and_names_the_bad(embedder, photos, broken_files):
    items = [photos[0], broken_files["empty"], broken_files["truncated"], photos[1], broken_files["text"], b"\x00" * 10]
    embeddings, ok, failures = embedder.encode_images_partial(items, batch_size=2)
    assert ok == [0, 3]
    np.testing.assert_allclose(embeddings, embedder.encode_images([photos[0], photos[1]]), atol=1e-6)
    assert [(index, label) for index, label, _ in failures] == [
        (1, str(broken_files["empty"])),
        (2, str(broken_files["truncated"])),
        (4, str(broken_files["text"])),
        (5, "<10 bytes>"),
    ]
    assert "empty" in failures[0][2] and "truncated" in failures[1][2] and "not an image" in failures[2][2]
    nothing = embedder.encode_images_partial([broken_files["empty"]])
    assert nothing.embeddings.shape == (0, 768) and nothing.ok_indices == [] and len(nothing.failures) == 1


def test_an_unknown_item_type_is_a_type_error(embedder):
    with pytest.raises(TypeError, match="got int"):
        embedder.encode_images([42])
    with pytest.raises(ImageDecodeError, match=r"images\[0\].*uint8 \[H, W, 3\]"):
        embedder.encode_images([np.zeros((8, 8), np.float32)])


def test_verify_catches_a_flipped_byte(exported_bundle, tmp_path):
    copy = _light_copy(exported_bundle, tmp_path / "bundle", private=("textual.fp16.onnx",))
    data = bytearray((copy / "textual.fp16.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "textual.fp16.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"textual\.fp16.*does not match the manifest"):
        Embedder.load(copy, backend="onnxruntime", precision="fp16")


def test_a_not_deployable_artifact_is_refused_unless_allowed(exported_bundle, tmp_path):
    copy = _light_copy(exported_bundle, tmp_path / "bundle")
    bundle = Bundle.load(copy)
    bundle.artifacts["visual.fp32"].deployable = False
    bundle.manifest.parity["visual.fp32"].failures = ["min row cosine 0.99 < 0.99999"]
    bundle.write_manifest()
    with pytest.raises(BundleError) as caught:
        Embedder.load(copy, backend="onnxruntime", precision="fp32")
    message = str(caught.value)
    assert "visual.fp32" in message and "allow_not_deployable=True" in message and "0.99 < 0.99999" in message
    allowed = Embedder.load(copy, backend="onnxruntime", precision="fp32", verify=False, allow_not_deployable=True)
    with allowed:
        assert allowed.precision == "fp32"


def test_logit_scale_and_classify_are_softmax_of_scaled_cosines(embedder, photos, exported_bundle):
    manifest = json.loads((exported_bundle / "manifest.json").read_text())
    assert embedder.logit_scale == pytest.approx(manifest["logit_scale"], rel=0, abs=0)
    labels, template = ["кошка", "ракета", "чашка кофе"], "фото: {}"
    probabilities = embedder.classify(photos[:2], labels, template=template)
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    images = embedder.encode_images(photos[:2]).astype(np.float64)
    texts = embedder.encode_texts([template.format(label) for label in labels]).astype(np.float64)
    logits = manifest["logit_scale"] * (images @ texts.T)
    by_hand = np.exp(logits - logits.max(axis=1, keepdims=True))
    by_hand /= by_hand.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, by_hand, atol=1e-6)
    similarities = embedder.similarity(images, texts)
    np.testing.assert_allclose(similarities, images @ texts.T, atol=1e-6)


def test_empty_inputs_give_empty_outputs(embedder):
    assert embedder.encode_images([]).shape == (0, 768)
    assert embedder.encode_texts([]).shape == (0, 768)
    with pytest.raises(TypeError, match=r"\[text\]"):
        embedder.encode_texts("кошка")


def test_texts_are_bucketed_by_length_and_come_back_in_input_order(embedder, monkeypatch):
    """Above one chunk, chunks are cut from the texts sorted by length, so short texts run narrow; row i still
    belongs to text i, equal to that text embedded alone."""
    rng = np.random.default_rng(1)
    words = ["кошка", "спит", "на", "диване", "рядом", "с", "собакой", "и", "чашкой", "кофе"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(13)]
    alone = np.concatenate([embedder.encode_texts([text]) for text in texts])
    widths = []
    real = embedder.backend.encode_tokens

    def recording(input_ids, attention_mask):
        widths.append(input_ids.shape[1])
        return real(input_ids, attention_mask)

    monkeypatch.setattr(embedder.backend, "encode_tokens", recording)
    bucketed = embedder.encode_texts(texts, batch_size=4)
    np.testing.assert_allclose(bucketed, alone, atol=1e-5)
    lengths = sorted(int(n) for n in embedder.tokenizer.encode(texts).lengths)
    assert widths == [max(lengths[i : i + 4]) for i in range(0, len(texts), 4)]
    assert widths == sorted(widths) and widths[0] < widths[-1]


# --- each graph's inputs and outputs are checked against the spec when loading (fake bundle: seconds) -------------


def _replaced_spec(encoder: spec.EncoderSpec, inputs=None, outputs=None) -> spec.EncoderSpec:
    return dataclasses.replace(encoder, inputs=inputs or encoder.inputs, outputs=outputs or encoder.outputs)


def _fixed_batch_visual(weights):
    one = _replaced_spec(
        spec.VISUAL,
        (spec.TensorSpec("pixels", "float32", (1, 3, 224, 224)),),
        (spec.TensorSpec("image_features", "float32", (1, 768)),),
    )
    return "visual.fp32", fake_bundle.visual_graph(weights, "fp32", one), "pixels has shape [1, 3, 224, 224]"


def _larger_pixels_visual(weights):
    large = _replaced_spec(spec.VISUAL, (spec.TensorSpec("pixels", "float32", (spec.BATCH, 3, 256, 256)),))
    return "visual.fp32", fake_bundle.visual_graph(weights, "fp32", large), "pixels has shape ['batch', 3, 256, 256]"


def _narrow_features_visual(weights):
    weights = {**weights, "visual.w2": np.ones((fake_bundle.HIDDEN, 512), np.float32)}
    narrow = _replaced_spec(spec.VISUAL, outputs=(spec.TensorSpec("image_features", "float32", (spec.BATCH, 512)),))
    return "visual.fp32", fake_bundle.visual_graph(weights, "fp32", narrow), "image_features has shape ['batch', 512]"


def _int32_ids_textual(weights):
    int32 = _replaced_spec(
        spec.TEXTUAL,
        (spec.TensorSpec("input_ids", "int32", (spec.BATCH, spec.SEQUENCE)), spec.TEXTUAL.inputs[1]),
    )
    return "textual.fp32", fake_bundle.textual_graph(weights, "fp32", int32), "input_ids is int32"


def _fixed_sequence_textual(weights):
    fixed = _replaced_spec(
        spec.TEXTUAL,
        tuple(spec.TensorSpec(t.name, t.dtype, (spec.BATCH, 77)) for t in spec.TEXTUAL.inputs),
    )
    return "textual.fp32", fake_bundle.textual_graph(weights, "fp32", fixed), "input_ids has shape ['batch', 77]"


def _visual_as_textual(weights):
    return "textual.fp32", fake_bundle.visual_graph(weights, "fp32"), "inputs are ['pixels']"


WRONG_IO = [_fixed_batch_visual, _larger_pixels_visual, _narrow_features_visual, _int32_ids_textual,
            _fixed_sequence_textual, _visual_as_textual]


@pytest.mark.parametrize("replacement", WRONG_IO, ids=[f.__name__.strip("_") for f in WRONG_IO])
def test_a_replaced_graph_with_other_io_is_refused_at_load_even_with_its_sha256_fixed(tmp_path, replacement):
    root = fake_bundle.build_fake_bundle(tmp_path / "bundle")
    key, graph, problem = replacement(fake_bundle.fake_weights())
    path = root / Bundle.load(root).artifact(key).path
    onnx.save(graph, str(path))
    fake_bundle.refresh_manifest_entry(root, key)  # the sha256 check passes: only the I/O check can tell
    with pytest.raises(BundleError) as caught:
        Embedder.load(root, backend="onnxruntime", precision="fp32")
    message = str(caught.value)
    assert str(path) in message and problem in message and "the spec says" in message
    # parity runs the same check: the artifact fails with the reason, the other one is still judged
    report = parity.run_parity(root, ("fp32",), write=False)
    assert report.results[key].passed is False and problem in report.results[key].error
    other = "textual.fp32" if key == "visual.fp32" else "visual.fp32"
    assert report.results[other].passed is True


def test_the_fused_text_graph_is_used_when_sound(tmp_path):
    root = fake_bundle.build_fake_bundle(tmp_path / "bundle")
    fake_bundle.add_fused_textual(root)
    with Embedder.load(root, backend="onnxruntime", precision="fp32") as embedder:
        assert embedder.backend.textual_fused is not None
        assert embedder.encode_texts(["слово3 слово7", "слово1"]).shape == (2, 768)


def test_a_corrupt_fused_text_graph_is_refused_not_skipped(tmp_path):
    """Before, ``auto`` fused attention dropped a fused graph that failed its sha256 check without a word."""
    root = fake_bundle.build_fake_bundle(tmp_path / "bundle")
    key = fake_bundle.add_fused_textual(root)
    fake_bundle.flip_byte(root / "textual.fused.onnx")
    with pytest.raises(BundleError, match=rf"{re.escape(key)}: .*textual\.fused\.onnx does not match the manifest"):
        Embedder.load(root, backend="onnxruntime", precision="fp32")
    # a caller who does not want the fused graph is not stopped by it
    with Embedder.load(root, backend="onnxruntime", precision="fp32", fused_attention=False) as embedder:
        assert embedder.backend.textual_fused is None


def test_a_fused_text_graph_with_other_io_is_refused(tmp_path):
    root = fake_bundle.build_fake_bundle(tmp_path / "bundle")
    key = fake_bundle.add_fused_textual(root)
    _, graph, problem = _fixed_sequence_textual(fake_bundle.fake_weights())
    onnx.save(graph, str(root / "textual.fused.onnx"))
    fake_bundle.refresh_manifest_entry(root, key)
    with pytest.raises(BundleError, match=re.escape(problem)):
        Embedder.load(root, backend="onnxruntime", precision="fp32")
