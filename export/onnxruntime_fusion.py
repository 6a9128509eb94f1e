"""``textual.fused.onnx``: the text encoder with ONNX Runtime's transformer fusions (fused multi-head Attention,
SkipLayerNormalization, EmbedLayerNormalization, BiasGelu) — an ONNX Runtime-only artifact (com.microsoft ops).

Only some export forms fuse: ONNX Runtime's fusion matches the classic BERT mask, ``(1 - mask[:, None, None, :]) ·
-10000`` added to the scores, with two single-axis Unsqueeze nodes; transformers 5's eager mask (GatherND/Where) and
the one-node Unsqueeze that onnxscript's optimizer makes are not matched. So this graph is exported with that mask
form (the same function: a key masked by -10000 gets exp(-10000 + s) = 0 in FP32, as with FP32's min) and the
Unsqueeze is split again before fusing.

The fused Attention reads each mask row as a LENGTH (the count of ones): it is exact for right-padded masks (ones
then zeros, what the tokenizer gives) and wrong for any other (a left- or inner-padded row is off by 1-3 in abs).
The manifest records ``mask: "right-padded"`` and the runtime routes every other mask to ``textual.onnx``.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from ruclip_tiny import spec
from ruclip_tiny.errors import RuclipTinyError
from ruclip_tiny.fileio import atomic_path

FUSED_FILE = "textual.fused.onnx"
ATTENTION_IMPLEMENTATION = "ruclip_bert_mask"
# The fused graph is wrong for other masks; the runtime checks this before feeding it.
MASK_REQUIREMENT = "right-padded"
# What a complete fusion of the 3-layer encoder gives; anything less runs unfused kernels and is not worth a file.
# The last layer computes one query row ([CLS], see export.onnx.cls_only_last_layer): its attention is not the
# self-attention pattern ONNX Runtime fuses and stays as plain MatMul/Softmax (exact for any mask).
EXPECTED_FUSIONS = {
    "Attention": spec.TEXT_ENCODER_CONFIG["n_layers"] - 1,
    "BiasGelu": spec.TEXT_ENCODER_CONFIG["n_layers"],
}


class FusionError(RuclipTinyError):
    """ONNX Runtime's transformer optimizer did not fuse the text encoder as expected."""


def _bert_mask(*args, attention_mask=None, **kwargs):
    """The classic BERT additive mask from the 2-D padding mask: float32 [B, 1, 1, L], 0 or -10000."""
    import torch

    if attention_mask is None:
        return None
    return (1.0 - attention_mask.unsqueeze(1).unsqueeze(2).to(torch.float32)) * -10000.0


def _scaled_dot_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """softmax(q·kᵀ / √d + mask)·v, the order ONNX Runtime's Attention fusion matches (Div, not Mul, by √d)."""
    import torch

    scores = torch.matmul(query, key.transpose(2, 3)) / math.sqrt(query.size(-1))
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = scores.softmax(dim=-1)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


@contextlib.contextmanager
def _bert_attention(model):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_IMPLEMENTATION, _scaled_dot_attention)
    AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, _bert_mask)
    config = model.transformer.config
    previous = config._attn_implementation
    config._attn_implementation = ATTENTION_IMPLEMENTATION
    try:
        yield
    finally:
        config._attn_implementation = previous


def split_unsqueezes(graph) -> int:
    """Rewrite every Unsqueeze over two constant axes as two single-axis Unsqueezes (the form the fusion matches).
    Returns how many were split. ``graph``: an ``onnx.ModelProto``, changed in place."""
    from onnx import TensorProto, helper, numpy_helper

    initializers = {tensor.name: tensor for tensor in graph.graph.initializer}
    nodes, split = [], 0
    for node in graph.graph.node:
        axes = initializers.get(node.input[1]) if node.op_type == "Unsqueeze" and len(node.input) > 1 else None
        values = sorted(numpy_helper.to_array(axes).ravel().tolist()) if axes is not None else []
        if len(values) != 2:
            nodes.append(node)
            continue
        first, second = (
            helper.make_tensor(f"{node.name}_axis{i}", TensorProto.INT64, [1], [value])
            for i, value in enumerate(values)
        )
        graph.graph.initializer.extend([first, second])
        middle = f"{node.output[0]}_first_axis"
        nodes.append(helper.make_node("Unsqueeze", [node.input[0], first.name], [middle], name=f"{node.name}_0"))
        nodes.append(helper.make_node("Unsqueeze", [middle, second.name], list(node.output), name=f"{node.name}_1"))
        split += 1
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
    return split


def export_fused_textual(model, path: str | Path) -> dict:
    """Export the FP32 text encoder of ``model`` with the BERT mask form, fuse it with ONNX Runtime's transformer
    optimizer and write it to ``path`` (atomically). Returns facts for the manifest; raises FusionError when the
    fusion is incomplete (then nothing is written)."""
    import tempfile

    import onnx
    from onnxruntime.transformers import optimizer

    from export.onnx import export_encoder

    config = spec.TEXT_ENCODER_CONFIG
    with tempfile.TemporaryDirectory() as scratch, _bert_attention(model):
        unfused = Path(scratch) / "textual.bert-mask.onnx"
        facts = export_encoder(model, "textual", unfused)
        graph = onnx.load(unfused)
    split = split_unsqueezes(graph)
    fused = optimizer.optimize_model(
        graph, model_type="bert", num_heads=config["n_heads"], hidden_size=config["dim"], opt_level=0
    )
    counts = {op: count for op, count in fused.get_fused_operator_statistics().items() if count}
    short = {op: (counts.get(op, 0), want) for op, want in EXPECTED_FUSIONS.items() if counts.get(op, 0) != want}
    if short:
        found = ", ".join(f"{op} {got} (expected {want})" for op, (got, want) in short.items())
        raise FusionError(f"ONNX Runtime's transformer optimizer fused the text encoder only partly: {found}")
    with atomic_path(path) as temporary:
        fused.save_model_to_file(str(temporary))
    return {**facts, "unsqueezes_split": split, "fused_operators": counts, "mask": MASK_REQUIREMENT}
