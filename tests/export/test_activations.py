"""The FP16 range report: it measures the right tensors, its stress set is what it claims, and it flags real risks."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from export.activations import (
    FP16_MAX,
    NEAR_MAX,
    STRESS_LONG_TEXTS,
    STRESS_SHORT_TEXTS,
    activation_report,
    format_activation_report,
    scan_activations,
    stress_inputs,
    summarize_activations,
)
from export.probe import probe_images, probe_pixels
from ruclip_tiny import spec
from ruclip_tiny.tokenizer import load_tokenizer
from ruclip_tiny.transform import image_transform


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def stress(tokenizer):
    return stress_inputs(tokenizer)


@pytest.fixture(scope="module")
def texts(tokenizer):
    batch = ["кошка", "ракета стартует с космодрома", "", "фото iPhone 15"]
    return batch, *tokenizer(batch)


def test_stress_texts_fill_all_77_positions_or_hold_a_single_token(stress, tokenizer):
    long_count = len(STRESS_LONG_TEXTS)
    mask = stress["attention_mask"]
    assert mask.shape == stress["input_ids"].shape == (long_count + len(STRESS_SHORT_TEXTS), spec.MAX_TEXT_LENGTH)
    assert (mask[:long_count].sum(axis=1) == spec.MAX_TEXT_LENGTH).all(), "77 non-pad tokens"
    assert (stress["input_ids"][:long_count] != tokenizer.pad_id).all()
    short = dict(zip(STRESS_SHORT_TEXTS.values(), range(long_count, len(mask))))
    assert mask[short["я"]].sum() == 3 and mask[short["🚀"]].sum() == 3, "[CLS] one token [SEP]"
    assert mask[short[""]].sum() == 2, "[CLS] [SEP] only"
    ids = stress["input_ids"][short[""]]
    assert list(ids[:2]) == [tokenizer.cls_id, tokenizer.sep_id]
    assert len(stress["text_labels"]) == len(stress["texts"]) == len(mask)


def test_stress_images_hold_only_the_extreme_normalised_values(stress):
    pixels = stress["pixels"]
    assert pixels.dtype == np.float32 and pixels.shape == (len(stress["image_labels"]), 3, 224, 224)
    mean = np.asarray(spec.IMAGE_MEAN, dtype=np.float32)
    std = np.asarray(spec.IMAGE_STD, dtype=np.float32)
    low, high = (0 - mean) / std, (1 - mean) / std
    for channel in range(3):
        values = pixels[:, channel]
        assert np.isin(values, [low[channel], high[channel]]).all()
    assert (pixels[0] == low[:, None, None]).all(), "black"
    assert (pixels[1] == high[:, None, None]).all(), "white"
    # Exactly what the preprocessing makes of a black and a white photo: extremes a real input can reach.
    transform = image_transform()
    assert np.array_equal(pixels[0], transform(Image.new("RGB", (300, 240), (0, 0, 0))))
    assert np.array_equal(pixels[1], transform(Image.new("RGB", (300, 240), (255, 255, 255))))
    for image in pixels[2:]:
        share = (image[0] == high[0]).mean()
        assert 0.4 < share < 0.6, "checkerboards and noise mix both extremes"


@pytest.fixture(scope="module")
def report(reference_model, tokenizer, texts):
    """One report for the checks below: the reference's full scan is the slow part (hooks on ~290 tensors)."""
    batch, ids, mask = texts
    photos = probe_images()[:1]
    return activation_report(
        reference_model, tokenizer, probe_pixels(photos), ids, mask, image_names=[p.name for p in photos], texts=batch
    )


def test_scan_measures_the_hooked_tensors_as_a_direct_computation_does(reference_model, report, stress, texts):
    _, ids, mask = texts
    pixels = np.concatenate([probe_pixels(probe_images()[:1]), stress["pixels"]])
    ids = np.concatenate([ids, stress["input_ids"]])
    mask = np.concatenate([mask, stress["attention_mask"]])
    with torch.inference_mode():
        stem = reference_model.visual.stem[0](torch.from_numpy(pixels)).abs()
        features = reference_model.encode_text(torch.from_numpy(ids), torch.from_numpy(mask)).abs()
        embeddings = reference_model.transformer.embeddings(torch.from_numpy(ids))
        attention = reference_model.transformer.transformer.layer[0].attention
        # Raw scores of layer 0 by another route than the scanner's (einsum over explicit heads).
        heads, width = attention.n_heads, spec.TEXT_ENCODER_CONFIG["dim"] // attention.n_heads
        q = attention.q_lin(embeddings).reshape(len(ids), -1, heads, width)
        k = attention.k_lin(embeddings).reshape(len(ids), -1, heads, width)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k).abs() / width**0.5
    figures = report["tensors"]
    image_labels, text_labels = report["inputs"]["images"], report["inputs"]["texts"]

    entry = figures["visual.stem.0"]
    assert entry["max_abs"] == pytest.approx(stem.max().item(), rel=1e-6)
    assert entry["max_at"] == image_labels[int(stem.flatten(1).amax(1).argmax())]
    assert entry["values"] == stem.numel()
    entry = figures["final_ln"]
    assert entry["max_abs"] == pytest.approx(features.max().item(), rel=1e-6)
    assert entry["min_nonzero_abs"] == pytest.approx(features[features > 0].min().item(), rel=1e-6)
    assert entry["max_at"] == text_labels[int(features.amax(1).argmax())]
    entry = figures["transformer.transformer.layer.0.attention:scores"]
    assert entry["max_abs"] == pytest.approx(scores.max().item(), rel=1e-5)
    # The residual stream and LayerNorm inputs are there, not only leaf modules.
    for name in (
        "visual.stages.3.blocks.2",
        "visual.stages.0.blocks.0",
        "transformer.embeddings",
        "transformer.transformer.layer.2",
        "transformer.transformer.layer.2.output_layer_norm:input",
    ):
        assert name in figures, name


def test_scan_attributes_each_extreme_to_its_input_row(reference_model, texts):
    """Row labels follow the batch: swapping two inputs swaps the row the maximum is attributed to."""
    _, ids, mask = texts
    ids, mask = ids[:2], mask[:2]
    first = scan_activations(reference_model, None, ids, mask, text_labels=["a", "b"])
    second = scan_activations(reference_model, None, ids[::-1].copy(), mask[::-1].copy(), text_labels=["a", "b"])
    assert {first["final_ln"]["max_at"], second["final_ln"]["max_at"]} == {"a", "b"}
    assert first["final_ln"]["max_abs"] == second["final_ln"]["max_abs"]


def test_unmodified_model_is_not_flagged_and_the_report_is_complete(report, texts):
    batch, _, _ = texts
    # Measured on the synthetic weights: the largest |x| is about 20, thousands of times below 65504.
    assert report["flags"] == []
    assert report["overall"]["max_abs"] < NEAR_MAX
    assert set(report["encoders"]) == set(spec.ENCODERS)
    for entry in report["encoders"].values():
        assert entry["headroom"] == pytest.approx(FP16_MAX / entry["max_abs"])
    assert len(report["top"]) == 15
    assert [e["max_abs"] for e in report["top"]] == sorted((e["max_abs"] for e in report["top"]), reverse=True)
    assert report["inputs"]["images"][0] == "probe: astronaut.jpg"
    assert sum(label.startswith("stress:") for label in report["inputs"]["images"]) == 5
    assert len(report["inputs"]["texts"]) == len(batch) + len(STRESS_LONG_TEXTS) + len(STRESS_SHORT_TEXTS)
    json.dumps(report)
    text = format_activation_report(report)
    assert "visual" in text and "textual" in text and "no flags" in text


def _text_only_report(model, ids, mask) -> dict:
    return summarize_activations(scan_activations(model, None, ids, mask))


def test_a_tensor_above_a_quarter_of_fp16_max_is_flagged(reference_model, texts):
    _, ids, mask = texts
    model = copy.deepcopy(reference_model)
    with torch.no_grad():
        model.final_ln.weight.mul_(1e5)  # text features in the hundreds of thousands
    report = _text_only_report(model, ids, mask)
    flagged = {flag["tensor"] for flag in report["flags"]}
    assert "final_ln" in flagged
    assert report["tensors"]["final_ln"]["max_abs"] > NEAR_MAX
    assert report["tensors"]["final_ln"]["above_fp16_max"] > 0
    assert report["encoders"]["textual"]["tensor"] == "final_ln"
    assert "FLAG final_ln" in format_activation_report(report)
    # Only the scaled module and what follows it: the encoder's other tensors are untouched.
    assert flagged == {"final_ln"}


def test_values_that_flush_to_zero_in_fp16_in_bulk_are_flagged(reference_model, texts):
    _, ids, mask = texts
    model = copy.deepcopy(reference_model)
    with torch.no_grad():
        model.final_ln.weight.mul_(1e-9)
        model.final_ln.bias.zero_()
    report = _text_only_report(model, ids, mask)
    (flag,) = report["flags"]
    assert flag["tensor"] == "final_ln" and flag["fp16_flushed_fraction"] > 0.5
    assert "flush to zero" in flag["reason"]
