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
