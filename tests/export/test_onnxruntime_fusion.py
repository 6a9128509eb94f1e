"""The fused text graph's export: the Unsqueeze split the fusion needs, and an incomplete fusion refused before
anything is written."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import onnxruntime_fusion
from export.onnxruntime_fusion import FusionError, export_fused_textual, split_unsqueezes


def test_a_two_axis_unsqueeze_becomes_two_single_axis_ones_with_the_same_result():
    import onnxruntime as ort

    axes = numpy_helper.from_array(np.array([1, 2], np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("Unsqueeze", ["mask", "axes"], ["out"], name="u")],
        "g",
        [helper.make_tensor_value_info("mask", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, ["b", 1, 1, "s"])],
        [axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.int64)
    cpu = ["CPUExecutionProvider"]
    before = ort.InferenceSession(model.SerializeToString(), providers=cpu).run(None, {"mask": mask})
    assert split_unsqueezes(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Unsqueeze", "Unsqueeze"]
    onnx.checker.check_model(model)
    after = ort.InferenceSession(model.SerializeToString(), providers=cpu).run(None, {"mask": mask})
    assert after[0].shape == (2, 1, 1, 3)
    np.testing.assert_array_equal(after[0], before[0])


def test_an_incomplete_fusion_is_refused_and_writes_nothing(reference_model, tmp_path, monkeypatch):
    # Two self-attentions fuse (the [CLS]-only last layer stays unfused); asking for three must refuse.
    monkeypatch.setattr(onnxruntime_fusion, "EXPECTED_FUSIONS", {"Attention": 3, "BiasGelu": 3})
    target = tmp_path / "textual.fused.onnx"
    with pytest.raises(FusionError, match=r"only partly: Attention 2 \(expected 3\)"):
        export_fused_textual(reference_model, target)
    assert list(tmp_path.iterdir()) == []
