"""The one description of the encoders agrees with itself and with the reference module."""

from __future__ import annotations

from ruclip_tiny import spec


def test_encoder_io_description():
    assert [t.name for t in spec.VISUAL.inputs] == ["pixels"]
    assert spec.VISUAL.inputs[0].symbolic_shape == ["batch", 3, 224, 224]
    assert spec.VISUAL.outputs[0].symbolic_shape == ["batch", 768]
    assert [(t.name, t.dtype) for t in spec.TEXTUAL.inputs] == [("input_ids", "int64"), ("attention_mask", "int64")]
    assert spec.TEXTUAL.inputs[0].symbolic_shape == ["batch", "seq"]
    assert [d.name for d in spec.TEXTUAL.dims] == ["batch", "seq"]
    assert (spec.SEQUENCE.min, spec.SEQUENCE.max) == (1, spec.MAX_TEXT_LENGTH) == (1, 77)
    assert spec.TEXTUAL.inputs[1].dynamic_dims == {0: spec.BATCH, 1: spec.SEQUENCE}
    assert set(spec.ENCODERS) == {"visual", "textual"}


def test_spec_matches_the_module(reference_model):
    assert reference_model.final_ln.out_features == spec.EMBED_DIM
    assert reference_model.final_ln.in_features == spec.TEXT_ENCODER_CONFIG["dim"]
    config = reference_model.transformer.config
    assert all(getattr(config, k) == v for k, v in spec.TEXT_ENCODER_CONFIG.items())
    assert reference_model.visual.num_features == spec.EMBED_DIM


def _textual_io(ids=("input_ids", "int64", ["batch", "seq"]), features=("text_features", "float32", ["batch", 768])):
    return [ids, ("attention_mask", "int64", ["batch", "seq"])], [features]


def test_io_mismatches_accepts_the_spec_and_any_dynamic_axis_unless_names_are_required():
    assert spec.io_mismatches(spec.TEXTUAL, *_textual_io()) == []
    unnamed = _textual_io(ids=("input_ids", "int64", [None, "sequence"]))  # TensorRT's -1, another dim name
    assert spec.io_mismatches(spec.TEXTUAL, *unnamed) == []
    assert spec.io_mismatches(spec.TEXTUAL, *unnamed, dim_names=True) == [
        "input_ids has shape [None, 'sequence'], the spec says ['batch', 'seq']"
    ]


def test_io_mismatches_names_each_difference():
    fixed_sequence = _textual_io(ids=("input_ids", "int64", ["batch", 77]))
    assert spec.io_mismatches(spec.TEXTUAL, *fixed_sequence) == [
        "input_ids has shape ['batch', 77], the spec says ['batch', 'seq']"
    ]
    narrow = _textual_io(
        ids=("input_ids", "int32", ["batch", "seq"]), features=("text_features", "float32", [None, 512])
    )
    assert spec.io_mismatches(spec.TEXTUAL, *narrow) == [
        "input_ids is int32, the spec says int64",
        "text_features has shape [None, 512], the spec says ['batch', 768]",
    ]
    pixels = [("pixels", "float32", ["batch", 3, 224, 225])], [("image_features", "float32", ["batch", 768])]
    assert spec.io_mismatches(spec.VISUAL, *pixels) == [
        "pixels has shape ['batch', 3, 224, 225], the spec says ['batch', 3, 224, 224]"
    ]
    assert spec.io_mismatches(spec.VISUAL, *_textual_io()) == [
        "inputs are ['input_ids', 'attention_mask'], the spec says ['pixels']",
        "outputs are ['text_features'], the spec says ['image_features']",
    ]
