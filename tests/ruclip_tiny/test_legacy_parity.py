"""Today's reference against the ORIGINAL 2022 stack (timm 0.5.4, transformers 4.12.3, torchvision transforms).

The expectations were computed by that stack itself (scripts/legacy_expectations.sh) and are read here; nothing in
this file recomputes them. Bars: features max |Δ| <= 1e-5 * max |ref|; preprocessing max |Δ| <= 1e-6; token ids equal.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests import legacy_cases
from tests.legacy_inputs import (
    EXPECTATIONS,
    FEATURE_TEXTS,
    SAMPLES_PER_IMAGE,
    TOKENIZER_CORPUS,
    corpus_sha256,
    crop_sha256,
    sample_indices,
    state_fingerprint,
)

FEATURE_TOLERANCE = 1e-5  # relative to the largest reference magnitude
PIXEL_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def legacy():
    with np.load(EXPECTATIONS, allow_pickle=False) as data:
        expectations = {k: data[k] for k in data.files}
    print("old stack:", json.loads(str(expectations["versions"])))
    return expectations


@pytest.fixture(scope="module")
def tokenizer():
    from ruclip_tiny.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def transform():
    from ruclip_tiny.transform import image_transform

    return image_transform()


def _relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def test_expectations_were_made_from_this_synthetic_checkpoint(legacy, synthetic_state):
    ours = state_fingerprint({k: v.numpy() for k, v in synthetic_state.items()})
    assert ours == str(legacy["checkpoint_fingerprint"]), (
        "synthetic_checkpoint() no longer produces the weights the expectations were computed with; "
        "regenerate them with scripts/legacy_expectations.sh"
    )


def test_state_dict_names_and_shapes_are_the_original_modules(legacy, reference_model):
    ours = {name: json.dumps(list(t.shape)) for name, t in reference_model.state_dict().items()}
    assert ours == dict(zip(map(str, legacy["state_names"]), map(str, legacy["state_shapes"])))


def test_tokenizer_ids_and_masks_equal_the_original_on_the_whole_corpus(legacy, tokenizer):
    corpus = json.loads(TOKENIZER_CORPUS.read_text(encoding="utf-8"))
    assert corpus_sha256(corpus) == str(legacy["corpus_sha256"]), "corpus changed: regenerate the expectations"
    assert len(corpus) >= 200
    input_ids, attention_mask = tokenizer(corpus)
    assert input_ids.dtype == attention_mask.dtype == np.int64
    differing = [corpus[i] for i in np.flatnonzero((input_ids != legacy["corpus_input_ids"]).any(axis=1))]
    assert not differing, f"{len(differing)} texts tokenize differently, e.g. {differing[:3]!r}"
    np.testing.assert_array_equal(attention_mask, legacy["corpus_attention_mask"])


def _case_pixels(transform) -> dict[str, np.ndarray]:
    return {name: transform(image) for name, image in legacy_cases.image_cases().items()}


def test_preprocessing_crops_equal_torchvision_for_every_mode_and_size(legacy, transform):
    """Every pixel: the RGB bytes torchvision's ToTensor saw, recovered from our normalised output, hash the same."""
    from ruclip_tiny import spec

    mean = np.array(spec.IMAGE_MEAN, dtype=np.float64)[:, None, None]
    std = np.array(spec.IMAGE_STD, dtype=np.float64)[:, None, None]
    ours = _case_pixels(transform)
    assert sorted(ours) == list(legacy["case_names"])
    differing = []
    for name, digest in zip(legacy["case_names"], legacy["case_crop_sha256"]):
        pixels = ours[str(name)]
        assert pixels.shape == (3, 224, 224) and pixels.dtype == np.float32
        recovered = np.rint((pixels * std + mean) * 255).astype(np.uint8).transpose(1, 2, 0)
        if crop_sha256(recovered) != str(digest):
            differing.append(str(name))
    assert not differing, f"crops differ from torchvision's for {differing}"


def test_preprocessing_values_equal_torchvision_within_1e6(legacy, transform):
    from ruclip_tiny.transform import load_image
    from tests.legacy_inputs import demo_photos

    ours = _case_pixels(transform)
    ours.update({p.name: transform(load_image(p)) for p in demo_photos()})
    worst = 0.0
    size = 3 * 224 * 224
    for seed, (name, values) in enumerate(zip(legacy["sample_names"], legacy["sample_values"])):
        indices = sample_indices(SAMPLES_PER_IMAGE, size, seed)
        delta = float(np.abs(ours[str(name)].reshape(-1)[indices] - values).max())
        assert delta <= PIXEL_TOLERANCE, f"{name}: max |Δ| {delta:.3g}"
        worst = max(worst, delta)
    print(f"preprocessing max |Δ| over {len(legacy['sample_names'])} images: {worst:.3g}")


def _feature_inputs(legacy, transform, tokenizer):
    from ruclip_tiny.transform import load_image
    from tests.legacy_inputs import DEMO_PHOTO_DIR

    cases = legacy_cases.image_cases()
    pixels = []
    for name in map(str, legacy["feature_image_names"]):
        pixels.append(transform(cases[name] if name in cases else load_image(DEMO_PHOTO_DIR / name)))
    assert list(legacy["feature_texts"]) == FEATURE_TEXTS
    input_ids, attention_mask = tokenizer(FEATURE_TEXTS)
    np.testing.assert_array_equal(input_ids, legacy["feature_input_ids"])
    np.testing.assert_array_equal(attention_mask, legacy["feature_attention_mask"])
    return torch.from_numpy(np.stack(pixels)), torch.from_numpy(input_ids), torch.from_numpy(attention_mask)


def test_image_and_text_features_match_the_original_stack(legacy, reference_model, transform, tokenizer):
    pixels, input_ids, attention_mask = _feature_inputs(legacy, transform, tokenizer)
    with torch.inference_mode():
        image = reference_model.encode_image(pixels).numpy()
        text = reference_model.encode_text(input_ids, attention_mask).numpy()
        logits = reference_model(pixels, input_ids, attention_mask)[0].numpy()
    image_error = _relative_error(image, legacy["image_features"])
    text_error = _relative_error(text, legacy["text_features"])
    print(f"max |Δ| / max |ref|: image {image_error:.3g}, text {text_error:.3g}")
    assert image_error <= FEATURE_TOLERANCE
    assert text_error <= FEATURE_TOLERANCE
    np.testing.assert_allclose(logits, legacy["logits_per_image"], atol=1e-4)


def test_todays_timm_norm_alone_would_miss_the_bar(legacy, reference_model, transform, tokenizer):
    """Why the legacy norm exists: with today's biased LayerNorm2d the image features leave the tolerance."""
    import copy

    from ruclip_tiny.model import LEGACY_UNBIASED_STAGES

    pixels, _, _ = _feature_inputs(legacy, transform, tokenizer)
    visual = copy.deepcopy(reference_model.visual)
    from timm.layers import LayerNorm2d

    for index in LEGACY_UNBIASED_STAGES:
        legacy_norm = visual.stages[index].downsample[0]
        plain = LayerNorm2d(legacy_norm.normalized_shape, eps=legacy_norm.eps)
        plain.load_state_dict(legacy_norm.state_dict())
        visual.stages[index].downsample[0] = plain
    with torch.inference_mode():
        today = visual(pixels).numpy()
    error = _relative_error(today, legacy["image_features"])
    print(f"today's timm without the legacy norm: max |Δ| / max |ref| = {error:.3g}")
    assert error > 100 * FEATURE_TOLERANCE
