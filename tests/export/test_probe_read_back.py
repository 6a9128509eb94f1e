"""The probe's read-back check compares NaN-aware, and a reference with NaN/Inf outputs is refused by name.

Before, a stored NaN read back as NaN was reported as "reads back as float32 [2, 768], not the float32 [2, 768]
written (or its values differ)": the same dtype and shape on both sides, and no word about NaN.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from export.bundle import ExportError
from export.probe import ProbeError, _write_polygraphy, check_finite_outputs, verify_polygraphy, write_probe
from ruclip_tiny import spec


def _probe_arrays(images: int = 2, texts: int = 3) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    size = spec.IMAGE_SIZE
    inputs = {
        "pixels": rng.normal(0, 1, (images, 3, size, size)).astype(np.float32),
        "input_ids": rng.integers(1, 100, (texts, spec.MAX_TEXT_LENGTH)).astype(np.int64),
        "attention_mask": np.ones((texts, spec.MAX_TEXT_LENGTH), np.int64),
    }
    outputs = {
        "image_features": rng.normal(0, 1, (images, spec.EMBED_DIM)).astype(np.float32),
        "text_features": rng.normal(0, 1, (texts, spec.EMBED_DIM)).astype(np.float32),
    }
    return inputs, outputs


def test_a_nan_written_and_read_back_as_nan_is_faithful(tmp_path):
    inputs, outputs = _probe_arrays()
    outputs["text_features"][1, 7] = np.nan
    outputs["image_features"][0, 0] = np.inf
    _write_polygraphy(tmp_path, inputs, outputs)  # writes, reads back and compares: must not raise
    verify_polygraphy(tmp_path, inputs, outputs)


def test_a_value_that_reads_back_differently_is_named_with_its_nans(tmp_path):
    inputs, outputs = _probe_arrays()
    _write_polygraphy(tmp_path, inputs, outputs)
    expected = dict(outputs, text_features=outputs["text_features"].copy())
    expected["text_features"][2, 5] = np.nan  # the file holds a number where NaN was meant
    with pytest.raises(ProbeError) as info:
        verify_polygraphy(tmp_path, inputs, expected)
    message = str(info.value)
    assert "textual_outputs.json: text_features 1 of 2304 values differ from those written (first at [2, 5]:" in message
    assert "nan written; NaN: 0 read back, 1 written)" in message and "re-export the probe" in message
    assert isinstance(info.value, ExportError) and isinstance(info.value, ValueError)


def test_a_shape_that_reads_back_differently_is_named(tmp_path):
    inputs, outputs = _probe_arrays()
    _write_polygraphy(tmp_path, inputs, outputs)
    expected = dict(outputs, image_features=outputs["image_features"][:1])
    shapes = r"image_features reads back as float32 \[2, 768\], not the float32 \[1, 768\]"
    with pytest.raises(ProbeError, match=shapes):
        verify_polygraphy(tmp_path, inputs, expected)


def test_non_finite_reference_outputs_are_refused_naming_the_output_and_rows():
    _, outputs = _probe_arrays(texts=8)
    outputs["text_features"][[1, 6], 3] = [np.nan, -np.inf]
    with pytest.raises(ProbeError, match=r"text_features on the probe hold 1 NaN and 1 Inf values \(rows 1, 6\)"):
        check_finite_outputs(outputs)
    check_finite_outputs(_probe_arrays()[1])  # finite outputs pass


def test_write_probe_refuses_a_model_whose_outputs_are_nan(reference_model, tmp_path):
    from ruclip_tiny.tokenizer import load_tokenizer

    broken = copy.deepcopy(reference_model)
    broken.final_ln.bias.data[0] = float("nan")  # the text head only: image features stay finite
    with pytest.raises(ProbeError, match=r"the reference model's text_features on the probe hold \d+ NaN"):
        write_probe(broken, load_tokenizer(), tmp_path)
    assert list(tmp_path.iterdir()) == [], "nothing is written for a reference that cannot be compared"
