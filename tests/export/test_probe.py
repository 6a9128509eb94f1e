"""The probe set: its texts cover the edge cases, its files hold the reference outputs and load without torch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import export.probe as probe
from export.probe import PROBE_TEXTS, REFERENCE_RUNNER, probe_images, verify_polygraphy, write_probe
from ruclip_tiny import spec
from ruclip_tiny.demo import DEMO_DIR, demo_labels
from ruclip_tiny.fileio import file_sha256
from ruclip_tiny.tokenizer import load_tokenizer
from runtime.bundle import POLYGRAPHY_DIR, PROBE_INPUTS, PROBE_REFERENCE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def written(reference_model, tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    return root, write_probe(reference_model, tokenizer, root)


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def test_probe_texts_cover_the_edge_cases(tokenizer):
    texts = list(PROBE_TEXTS)
    assert len(texts) >= 30 and len(set(texts)) == len(texts)
    assert "" in texts
    assert any(t and not t.strip() for t in texts), "a whitespace-only text"
    assert any("ё" in t for t in texts) and any("Ё" in t for t in texts) and any("й" in t for t in texts)
    assert any(any("a" <= c.lower() <= "z" for c in t) and any("а" <= c.lower() <= "я" for c in t) for t in texts)
    assert any(any(c.isdigit() for c in t) for t in texts)
    assert any("«" in t and "»" in t for t in texts)
    assert any(any(ord(c) >= 0x1F300 for c in t) for t in texts), "an emoji"
    assert any(t and " " not in t.strip() and t.isalpha() for t in texts), "a one-word text"
    truncated = tokenizer.truncated_indices(texts)
    assert truncated, "at least one text longer than 77 tokens"
    # Every demo photo's label appears in some probe text: those rows give zero-shot top-1 a clear answer.
    labels, _ = demo_labels()
    for label in labels.values():
        assert any(label in t.lower() for t in texts), label


def test_probe_images_are_the_demo_photos():
    photos = probe_images()
    assert [p.name for p in photos] == sorted(p.name for p in photos)
    assert {p.name for p in photos} == set(demo_labels()[0])


def test_write_probe_writes_every_file_and_reports_it(written):
    root, fragment = written
    paths = {entry.path for entry in fragment.files}
    assert {PROBE_INPUTS, PROBE_REFERENCE} <= paths
    for encoder in spec.ENCODERS:
        assert f"{POLYGRAPHY_DIR}/{encoder}_inputs.json" in paths
        assert f"{POLYGRAPHY_DIR}/{encoder}_outputs.json" in paths
    for entry in fragment.files:
        path = root / entry.path
        assert path.is_file() and path.stat().st_size == entry.size and file_sha256(path) == entry.sha256
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert on_disk == paths, "nothing written that the fragment does not list (no temporary files left)"
    assert not list(root.rglob("*.partial"))
    assert fragment.images == len(probe_images()) and fragment.texts == len(PROBE_TEXTS)
    assert fragment.extra["runner"] == REFERENCE_RUNNER
    json.dumps(fragment.to_json())  # the fragment goes into manifest.json


def test_photos_and_their_licences_are_copied(written):
    root, _ = written
    for photo in [*probe_images(), DEMO_DIR / "README.md"]:
        assert (root / probe.PROBE_IMAGES_DIR / photo.name).read_bytes() == photo.read_bytes()


def test_inputs_npz_holds_the_probe_with_exact_shapes_and_dtypes(written, tokenizer):
    root, fragment = written
    inputs = _npz(root / PROBE_INPUTS)
    ni, nt = len(probe_images()), len(PROBE_TEXTS)
    assert inputs["pixels"].dtype == np.float32 and inputs["pixels"].shape == (ni, 3, 224, 224)
    for name in ("input_ids", "attention_mask"):
        assert inputs[name].dtype == np.int64 and inputs[name].shape == (nt, spec.MAX_TEXT_LENGTH)
    assert list(inputs["texts"]) == list(PROBE_TEXTS), "texts round-trip exactly, whitespace-only included"
    assert list(inputs["image_names"]) == [p.name for p in probe_images()]
    ids, mask = tokenizer(list(PROBE_TEXTS))
    assert np.array_equal(inputs["input_ids"], ids) and np.array_equal(inputs["attention_mask"], mask)
    truncated = tokenizer.truncated_indices(list(PROBE_TEXTS))
    assert inputs["truncated"].dtype == np.int64 and list(inputs["truncated"]) == truncated
    assert fragment.extra["truncated_texts"] == truncated
    assert all(inputs["attention_mask"][i].sum() == spec.MAX_TEXT_LENGTH for i in truncated)
    empty = list(PROBE_TEXTS).index("")
    assert inputs["attention_mask"][empty].sum() == 2, "[CLS] [SEP] only"


def test_reference_npz_equals_a_fresh_run_of_the_model(written, reference_model):
    root, fragment = written
    inputs, reference = _npz(root / PROBE_INPUTS), _npz(root / PROBE_REFERENCE)
    with torch.inference_mode():
        image = reference_model.encode_image(torch.from_numpy(inputs["pixels"])).numpy()
        text = reference_model.encode_text(
            torch.from_numpy(inputs["input_ids"]), torch.from_numpy(inputs["attention_mask"])
        ).numpy()
    assert reference["image_features"].dtype == np.float32 and reference["image_features"].shape == (6, spec.EMBED_DIM)
    assert reference["text_features"].shape == (len(PROBE_TEXTS), spec.EMBED_DIM)
    np.testing.assert_array_equal(reference["image_features"], image)
    np.testing.assert_array_equal(reference["text_features"], text)
    scale = reference["logit_scale"]
    assert scale.dtype == np.float32 and scale.shape == ()
    assert math.isclose(float(scale), math.exp(reference_model.logit_scale.item()), rel_tol=1e-6)
    # one logit_scale: the manifest's (Manifest.to_json writes it into probe too), not a second one of the probe's
    assert "logit_scale" not in fragment.to_json()


def test_polygraphy_files_round_trip_exactly(written):
    import polygraphy.json as polygraphy_json
    from polygraphy.comparator import RunResults

    root, _ = written
    inputs, reference = _npz(root / PROBE_INPUTS), _npz(root / PROBE_REFERENCE)
    for encoder, encoder_spec in spec.ENCODERS.items():
        feeds = polygraphy_json.load_json(str(root / POLYGRAPHY_DIR / f"{encoder}_inputs.json"))
        assert isinstance(feeds, list) and len(feeds) == 1 and isinstance(feeds[0], dict)
        assert list(feeds[0]) == [t.name for t in encoder_spec.inputs]
        for name, array in feeds[0].items():
            assert array.dtype == inputs[name].dtype and np.array_equal(array, inputs[name])

        results = RunResults.load(str(root / POLYGRAPHY_DIR / f"{encoder}_outputs.json"))
        assert list(results.keys()) == [REFERENCE_RUNNER] and len(results[REFERENCE_RUNNER]) == 1
        (output,) = encoder_spec.outputs
        stored = results[REFERENCE_RUNNER][0][output.name]
        assert stored.dtype == np.float32 and np.array_equal(stored, reference[output.name])


def test_polygraphy_files_load_without_torch_or_tensorrt(written):
    root, _ = written
    code = (
        "import sys\n"
        "for name in ('torch', 'tensorrt', 'timm', 'transformers'): sys.modules[name] = None\n"
        "import numpy as np\n"
        "from export.probe import verify_polygraphy\n"
        f"root = {str(root)!r}\n"
        f"inputs = dict(np.load(root + '/{PROBE_INPUTS}', allow_pickle=False))\n"
        f"outputs = dict(np.load(root + '/{PROBE_REFERENCE}', allow_pickle=False))\n"
        "verify_polygraphy(root, inputs, outputs)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr


def test_verify_polygraphy_refuses_a_file_whose_arrays_differ(written):
    root, _ = written
    inputs, reference = _npz(root / PROBE_INPUTS), _npz(root / PROBE_REFERENCE)
    tampered = dict(reference, text_features=reference["text_features"] + np.float32(1e-6))
    with pytest.raises(ValueError, match="textual_outputs.json: text_features"):
        verify_polygraphy(root, inputs, tampered)


def test_a_failed_write_leaves_no_partial_file_and_no_half_written_probe(
    reference_model, tokenizer, tmp_path, monkeypatch
):
    import polygraphy.json as polygraphy_json

    def crash(obj, dest, description=None):
        Path(dest).write_text('[{"half": ')  # what a killed writer would leave behind
        raise OSError("disk full")

    monkeypatch.setattr(polygraphy_json, "save_json", crash)
    with pytest.raises(OSError, match="disk full"):
        write_probe(reference_model, tokenizer, tmp_path)
    assert not list(tmp_path.rglob("*.partial"))
    assert not (tmp_path / POLYGRAPHY_DIR / "visual_inputs.json").exists()
    assert (tmp_path / PROBE_INPUTS).is_file(), "files finished before the failure are complete"
    _npz(tmp_path / PROBE_INPUTS)


def test_a_model_in_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval"):
        probe.reference_features(types.SimpleNamespace(training=True), None, None, None)
