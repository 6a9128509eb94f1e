"""ONNX graphs of the two encoders, exported from the reference and checked before anything trusts them.

Exporter: ``torch.onnx.export(dynamo=True)``, opset 18. The TorchScript exporter traces transformers 5's attention
mask construction for the example shapes, and its textual graph disagreed with PyTorch by 1.7 on the very inputs
it traced; the dynamo exporter captures the mask symbolically, matches to ~1e-6 and gives a smaller text graph
(135 nodes vs 304). Opset 18 is the lowest it supports; TensorRT 10/11 and ONNX Runtime read it.
After export, onnxscript's optimizer (constant folding, dead-code removal, common rewrites) simplifies the graph;
parity is measured before and after so the simplification is proven harmless.
GELU is exported as ``x·(1 + erf(x/√2))·0.5`` (``fusable_gelu``), the order ONNX Runtime's GELU fusion matches.
The text encoder's last layer is exported for the [CLS] row only (``cls_only_last_layer``): the features come from
that row alone, so the other rows of the last layer are work whose result is thrown away.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from pathlib import Path

import numpy as np

from ruclip_tiny import spec
from ruclip_tiny.errors import RuclipTinyError
from ruclip_tiny.fileio import atomic_path

OPSET = 18
# Example inputs for the exporter: batch 2, sequence 16 with padding in the second row, so nothing that depends on
# a full mask or a batch of one can be baked in.
EXAMPLE_BATCH = 2
EXAMPLE_SEQUENCE = 16


class GraphCheckError(RuclipTinyError, RuntimeError):
    """An exported graph that fails the ONNX checker, shape inference, the I/O contract, or parity."""


# The activation modules of the reference (timm's and transformers' exact GELU) that ``fusable_gelu`` rewrites.
EXACT_GELU_MODULES = ("GELU", "GELUActivation")


@contextlib.contextmanager
def fusable_gelu(model):
    """Within the block, every exact GELU of ``model`` computes ``x·(1 + erf(x/√2))·0.5`` — the same function.

    Why: the exporter decomposes ``gelu`` into ``x·(0.5·(1 + erf(x/√2)))``, an operation order ONNX Runtime's
    GELU fusion does not match, so the visual graph ran five element-wise kernels per MLP (~25% of its CPU time at
    batch 8). In this order ONNX Runtime fuses the bias add and GELU into one ``BiasGelu`` kernel; TensorRT fuses
    either form. The two orders differ by float rounding only (max |Δ| ~1e-6 on the visual features).
    """
    import torch
    from torch import nn

    class ErfGelu(nn.Module):
        def forward(self, x):
            return x * (1.0 + torch.erf(x / math.sqrt(2.0))) * 0.5

    replaced = []
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            exact = getattr(child, "approximate", "none") == "none"
            if type(child).__name__ in EXACT_GELU_MODULES and exact:
                replaced.append((parent, name, child))
                setattr(parent, name, ErfGelu())
    try:
        yield len(replaced)
    finally:
        for parent, name, child in replaced:
            setattr(parent, name, child)


# How the exported text graph computes its last layer (recorded in the manifest's export facts).
TEXT_LAST_LAYER = "cls-only"


@contextlib.contextmanager
def cls_only_last_layer(model):
    """Within the block, the last DistilBERT layer of ``model`` computes only the [CLS] row; undone on exit.

    The text features are ``final_ln(hidden[:, 0])``. In the last layer, row 0 depends on every row only through
    the keys and values of attention; its query, the output projection, both LayerNorms and the FFN are per row.
    So the block keeps K and V for all positions and computes the rest for position 0: the same function for the
    features (float rounding aside), with 80% of the last layer's matrix work gone (a third of a 3-layer encoder's
    at 77 tokens). ``last_hidden_state`` becomes ``[B, 1, dim]``; ``hidden[:, 0]`` is unchanged.
    The attention kernel is the one the model's config names (eager, the FP16 islands' or the BERT-mask form), and
    the additive mask keeps only its first query row.
    """
    from torch import nn
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.distilbert.modeling_distilbert import eager_attention_forward

    class ClsOnlyBlock(nn.Module):
        def __init__(self, block):
            super().__init__()
            self.block = block

        def forward(self, hidden_states, attention_mask=None, **kwargs):
            block, attention = self.block, self.block.attention
            head = attention.attention_head_size
            cls = hidden_states[:, :1]
            query = attention.q_lin(cls).view(*cls.shape[:-1], -1, head).transpose(1, 2)
            key = attention.k_lin(hidden_states).view(*hidden_states.shape[:-1], -1, head).transpose(1, 2)
            value = attention.v_lin(hidden_states).view(*hidden_states.shape[:-1], -1, head).transpose(1, 2)
            if attention_mask is not None and attention_mask.dim() == 4:
                attention_mask = attention_mask[:, :, :1, :]  # [B, 1, 1 or L, L] -> the [CLS] query's row
            implementation = attention.config._attn_implementation
            kernel = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
            output, _ = kernel(attention, query, key, value, attention_mask, dropout=0.0, scaling=attention.scaling)
            output = attention.out_lin(output.reshape(*cls.shape[:-1], -1))
            output = block.sa_layer_norm(output + cls)
            return block.output_layer_norm(block.ffn(output) + output)

    layers = model.transformer.transformer.layer
    last = layers[-1]
    layers[-1] = ClsOnlyBlock(last)
    try:
        yield
    finally:
        layers[-1] = last


def encoder_module(model, encoder: str):
    """The ``nn.Module`` whose forward is one encoder with the spec's input order."""
    from torch import nn

    class VisualEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixels):
            return self.model.encode_image(pixels).float()

    class TextualEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model.encode_text(input_ids, attention_mask).float()

    return {"visual": VisualEncoder, "textual": TextualEncoder}[encoder]().eval()


def example_inputs(encoder: str, batch: int = EXAMPLE_BATCH, seq: int = EXAMPLE_SEQUENCE, seed: int = 0) -> dict:
    """Deterministic numpy inputs named as in the spec: pixels float32 [B,3,224,224] or ids/mask int64 [B,seq]."""
    rng = np.random.default_rng(seed)
    if encoder == "visual":
        return {"pixels": rng.standard_normal((batch, 3, spec.IMAGE_SIZE, spec.IMAGE_SIZE)).astype(np.float32)}
    ids = rng.integers(1000, 2000, (batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    lengths = np.clip(seq - np.arange(batch) * (seq // 3 + 1), 1, seq)  # row 0 full, later rows padded
    for row, length in enumerate(lengths):
        ids[row, length - 1], ids[row, 0] = 102, 101
        ids[row, length:], mask[row, length:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def _dynamic_shapes(encoder_spec: spec.EncoderSpec) -> dict:
    from torch.export import Dim

    dims = {d.name: Dim(d.name, min=d.min, max=d.max if d.max is not None else 4096) for d in encoder_spec.dims}
    return {t.name: {axis: dims[d.name] for axis, d in t.dynamic_dims.items()} for t in encoder_spec.inputs}


def export_encoder(model, encoder: str, path: str | Path, optimize: bool = True, reference=None) -> dict:
    """Export one encoder of ``model`` to ``path`` (atomically) and check it. Returns facts for the manifest.

    ``model``: a RuCLIPTiny (FP32, or the FP16 variant from ruclip_tiny.fp16); the graph's I/O is always the spec's.
    ``reference``: the model the graph's error is measured against (default ``model``; the FP16 graphs are measured
    against the FP32 reference, which is what they must match — and torch's FP16 convolutions crawl on a CPU).
    """
    import onnx
    import torch

    encoder_spec = spec.ENCODERS[encoder]
    module = encoder_module(model, encoder)
    feeds = example_inputs(encoder)
    args = tuple(torch.from_numpy(feeds[t.name]) for t in encoder_spec.inputs)
    text_form = cls_only_last_layer(model) if encoder == "textual" else contextlib.nullcontext()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), fusable_gelu(model), text_form:
        warnings.simplefilter("ignore")  # the exporter's chatter; failures still raise
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=OPSET,
            input_names=[t.name for t in encoder_spec.inputs],
            output_names=[t.name for t in encoder_spec.outputs],
            dynamic_shapes=_dynamic_shapes(encoder_spec),
            optimize=False,
            verbose=False,
        )
    graph = program.model_proto
    with torch.inference_mode():
        expected = encoder_module(reference if reference is not None else model, encoder)(*args).numpy()
    facts = {"exporter": f"torch.onnx.export(dynamo=True) torch {torch.__version__}", "opset": OPSET}
    if encoder == "textual":
        facts["last_layer"] = TEXT_LAST_LAYER
    facts["nodes_exported"] = len(graph.graph.node)
    facts["max_abs_error_exported"] = _max_error(graph, feeds, expected)
    if optimize:
        import onnxscript.optimizer

        graph = onnxscript.optimizer.optimize(graph)
        facts["nodes_optimized"] = len(graph.graph.node)
        facts["max_abs_error_optimized"] = _max_error(graph, feeds, expected)
    _name_dynamic_dims(graph, encoder_spec)
    with atomic_path(path) as temporary:
        onnx.save(graph, temporary)
        check_graph(temporary, encoder)
    return facts


def _max_error(graph, feeds: dict, expected: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return float(np.abs(session.run(None, feeds)[0] - expected).max())


def _name_dynamic_dims(graph, encoder_spec: spec.EncoderSpec) -> None:
    """Give every dynamic axis of the graph's inputs and outputs the spec's name (``batch``, ``seq``)."""
    for value, tensor in zip(
        [*graph.graph.input, *graph.graph.output], [*encoder_spec.inputs, *encoder_spec.outputs]
    ):
        for axis, dim in tensor.dynamic_dims.items():
            value.type.tensor_type.shape.dim[axis].dim_param = dim.name


def check_graph(path: str | Path, encoder: str) -> None:
    """Full ONNX checker, strict shape inference, and the spec's I/O contract (names, dtypes, symbolic shapes)."""
    import onnx

    encoder_spec = spec.ENCODERS[encoder]
    try:
        onnx.checker.check_model(str(path), full_check=True)
        inferred = onnx.shape_inference.infer_shapes(onnx.load(str(path)), check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise GraphCheckError(f"{path}: the {encoder} graph is not valid ONNX: {exc}") from None
    problems = io_problems(inferred.graph, encoder_spec)
    if problems:
        raise GraphCheckError(f"{path}: the {encoder} graph's I/O differs from the spec: {'; '.join(problems)}")


def check_graph_io(path: str | Path, encoder: str) -> None:
    """The spec's I/O contract alone (names, dtypes, symbolic shapes; no checker, no shape inference), for a graph
    that was fully checked when it was exported and is now copied elsewhere. Raises GraphCheckError."""
    import onnx

    problems = io_problems(onnx.load(str(path), load_external_data=False).graph, spec.ENCODERS[encoder])
    if problems:
        raise GraphCheckError(f"{path}: the {encoder} graph's I/O differs from the spec: {'; '.join(problems)}")


def io_problems(graph, encoder_spec: spec.EncoderSpec) -> list[str]:
    """How the inputs (initializers aside) and outputs of ``graph`` (an ``onnx.GraphProto``) differ from
    ``encoder_spec``'s: ``spec.io_mismatches`` with the spec's dimension names required, as export writes them."""
    initializers = {initializer.name for initializer in graph.initializer}
    inputs = [_describe_value(v) for v in graph.input if v.name not in initializers]
    outputs = [_describe_value(v) for v in graph.output]
    return spec.io_mismatches(encoder_spec, inputs, outputs, dim_names=True)


def _describe_value(value) -> tuple[str, str, list]:
    import onnx

    tensor_type = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    shape = [d.dim_param if d.dim_param else d.dim_value for d in tensor_type.shape.dim]
    return value.name, dtype, shape
