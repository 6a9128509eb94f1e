"""The exported graphs: the spec's dynamic shapes, exact FP32 parity, and an FP16 graph that keeps its FP32 islands."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.onnx import GraphCheckError, check_graph, example_inputs
from ruclip_tiny.errors import RuclipTinyError


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _reference(model, encoder, feeds):
    with torch.inference_mode():
        if encoder == "visual":
            return model.encode_image(torch.from_numpy(feeds["pixels"])).numpy()
        ids, mask = torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])
        return model.encode_text(ids, mask).numpy()


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_visual_graph_takes_any_batch(exported_bundle, bundle_reference_model, batch):
    feeds = example_inputs("visual", batch=batch, seed=batch)
    out = _session(exported_bundle / "visual.onnx").run(None, feeds)[0]
    assert out.shape == (batch, 768) and out.dtype == np.float32
    np.testing.assert_allclose(out, _reference(bundle_reference_model, "visual", feeds), atol=2e-5)


@pytest.mark.parametrize("batch, seq", [(1, 1), (7, 16), (64, 77), (3, 77)])
def test_textual_graph_takes_any_batch_and_sequence_length(exported_bundle, bundle_reference_model, batch, seq):
    feeds = example_inputs("textual", batch=batch, seq=seq, seed=batch)
    for name in ("textual.onnx", "textual.fp16.onnx"):
        out = _session(exported_bundle / name).run(None, feeds)[0]
        assert out.shape == (batch, 768) and out.dtype == np.float32
        reference = _reference(bundle_reference_model, "textual", feeds)
        tolerance = 2e-5 if name == "textual.onnx" else 2e-2
        np.testing.assert_allclose(out, reference, atol=tolerance * np.abs(reference).max())


@pytest.mark.parametrize("name", ["textual.onnx", "textual.fp16.onnx"])
def test_padded_and_unpadded_copies_of_a_text_give_the_same_embedding(exported_bundle, name):
    ids = np.array([[101, 1500, 1640, 1777, 1820, 102]], dtype=np.int64)
    mask = np.ones_like(ids)
    padded_ids = np.zeros((1, 77), dtype=np.int64)
    padded_mask = np.zeros((1, 77), dtype=np.int64)
    padded_ids[0, :6], padded_mask[0, :6] = ids[0], 1
    session = _session(exported_bundle / name)
    short = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    long = session.run(None, {"input_ids": padded_ids, "attention_mask": padded_mask})[0]
    np.testing.assert_allclose(short, long, atol=1e-5 * np.abs(short).max())


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


@pytest.mark.parametrize("encoder", ["visual", "textual"])
def test_fp16_graph_computes_in_fp16_with_fp32_norms_softmax_and_io(exported_bundle, encoder):
    model = onnx.load(exported_bundle / f"{encoder}.fp16.onnx")
    types = _value_types(model)
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert all(types[v.name] == fp32 for v in model.graph.output)
    heavy = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    in_fp16 = [n for n in heavy if types.get(n.input[1]) == fp16]
    assert len(in_fp16) >= 0.8 * len(heavy), "the bulk of the compute must be FP16"
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert types[node.input[0]] == fp32 and types[node.output[0]] == fp32, node.name
    constants = list(model.graph.initializer) + [
        attribute.t for node in model.graph.node if node.op_type == "Constant" for attribute in node.attribute
        if attribute.name == "value"
    ]
    for tensor in constants:
        if tensor.data_type in (fp16, fp32):  # no FP32-min mask fill or any other constant FP16 cannot hold
            values = onnx.numpy_helper.to_array(tensor)
            assert np.isfinite(values).all() and np.abs(values).max(initial=0) <= 65504, tensor.name


def test_graph_check_rejects_a_graph_whose_io_differs_from_the_spec(exported_bundle, tmp_path):
    model = onnx.load(exported_bundle / "visual.onnx")
    old = model.graph.output[0].name
    (producer,) = [n for n in model.graph.node if old in n.output]
    producer.output[list(producer.output).index(old)] = "features"
    model.graph.output[0].name = "features"
    path = tmp_path / "renamed.onnx"
    onnx.save(model, path)
    check_graph(exported_bundle / "visual.onnx", "visual")
    with pytest.raises(GraphCheckError, match="spec says") as caught:
        check_graph(path, "visual")
    assert isinstance(caught.value, RuclipTinyError)  # the CLI's one error line and exit 2, not a traceback


@pytest.mark.parametrize(("encoder", "blocks"), [("visual", 18), ("textual", 3)])
def test_onnxruntime_fuses_every_gelu_of_the_exported_graphs(exported_bundle, tmp_path, encoder, blocks):
    """The exported GELU order is one ONNX Runtime's fusion matches: after its optimisation no Erf is left and
    every MLP runs one BiasGelu kernel (the exporter's own order left five element-wise kernels per MLP)."""
    optimized = tmp_path / "optimized.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(exported_bundle / f"{encoder}.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(optimized, load_external_data=False).graph.node]
    assert "Erf" not in ops
    assert ops.count("BiasGelu") == blocks


def test_fusable_gelu_is_the_same_function_and_is_undone(reference_model):
    import torch

    from export.onnx import fusable_gelu

    mlp = reference_model.visual.stages[0].blocks[0].mlp
    x = torch.linspace(-8, 8, 4001)
    exact = mlp.act(x)
    with fusable_gelu(reference_model) as count:
        assert count == 21  # 18 ConvNeXt MLPs + 3 DistilBERT FFNs
        assert type(mlp.act).__name__ == "ErfGelu"
        rewritten = mlp.act(x)
    assert type(mlp.act).__name__ == "GELU"
    assert torch.allclose(rewritten, exact, atol=1e-6, rtol=0)


def _weight_matmul_rows(path) -> list[tuple[tuple, object]]:
    """(weight shape, symbolic row axis of the output) of every MatMul by a weight, in graph order."""
    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info
    }
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return [
        (weights[node.input[1]], shapes[node.output[0]][1])
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1] in weights
    ]


@pytest.mark.parametrize("name", ["textual.onnx", "textual.fp16.onnx"])
def test_the_text_graph_computes_its_last_layer_for_the_cls_row_only(exported_bundle, name):
    from ruclip_tiny import spec

    config = spec.TEXT_ENCODER_CONFIG
    rows = _weight_matmul_rows(exported_bundle / name)
    per_layer = 6  # q, k, v, out, ffn lin1, ffn lin2
    assert len(rows) == per_layer * config["n_layers"]
    *early, last = [rows[i : i + per_layer] for i in range(0, len(rows), per_layer)]
    for layer in early:
        assert [axis for _, axis in layer] == ["seq"] * per_layer
    # the last layer: keys and values over every position; query, output projection and FFN on one row
    assert [axis for _, axis in last] == [1, "seq", "seq", 1, 1, 1]  # q, k, v, out, lin1, lin2
    assert [shape for shape, axis in last if axis == 1][-2:] == [(config["dim"], config["hidden_dim"]),
                                                                 (config["hidden_dim"], config["dim"])]


def test_cls_only_last_layer_is_the_same_function_for_any_mask_and_is_undone(reference_model):
    from export.onnx import cls_only_last_layer

    feeds = example_inputs("textual", batch=4, seq=20, seed=3)
    ids = torch.from_numpy(feeds["input_ids"])
    masks = [torch.from_numpy(feeds["attention_mask"])]
    left = masks[0].clone()
    left[3] = torch.tensor([0] * 5 + [1] * 15)  # left-padded and inner-padded rows: any mask, not only the tokenizer's
    left[2] = torch.tensor([1, 1, 0, 0, 1, 1] + [0] * 14)
    masks.append(left)
    layers = reference_model.transformer.transformer.layer
    original = layers[-1]
    for mask in masks:
        with torch.inference_mode():
            full = reference_model.encode_text(ids, mask)
            with cls_only_last_layer(reference_model):
                assert layers[-1] is not original
                hidden = reference_model.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
                cls_only = reference_model.encode_text(ids, mask)
        assert hidden.shape == (4, 1, layers[0].attention.dim)
        assert layers[-1] is original
        torch.testing.assert_close(cls_only, full, atol=5e-6 * float(full.abs().max()), rtol=0)


def test_the_text_graphs_record_their_last_layer_form(exported_bundle):
    import json

    manifest = json.loads((exported_bundle / "manifest.json").read_text())
    for key in ("textual.fp32", "textual.fp16", "textual.fp32.fused"):
        assert manifest["artifacts"][key]["export"]["last_layer"] == "cls-only"
    assert "last_layer" not in manifest["artifacts"]["visual.fp32"]["export"]
