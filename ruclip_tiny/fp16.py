"""The model's mixed-precision form (FP16 with FP32 islands) that the FP16 ONNX graphs are exported from: the
precision contract.

TensorRT 11 builds strongly typed networks, so the precision of every op comes from the ONNX graph. The graph is
exported straight from PyTorch with the model in half precision, except where FP16 is known to fail:
- every LayerNorm (ConvNeXt's channel norms, the legacy unbiased ones, DistilBERT's) computes in FP32: DistilBERT's
  eps 1e-12 underflows FP16, and the variance of an un-normalised residual stream overflows it;
- attention scores, the additive mask and the softmax are FP32; the mask's fill value is FP16's lowest finite
  number (-65504), not FP32's min, so no constant in the graph becomes -inf in FP16 (which gives NaN for a fully
  masked row) even if a builder ran that path in FP16;
- inputs and outputs stay FP32 (pixels, features), so callers and the runtime see the FP32 graph's interface.
Why this instead of a converter: onnxconverter-common ran past 15 minutes on this ConvNeXt and, without Cast in its
block list, produced a graph ONNX Runtime rejects; ModelOpt AutoCast pins older onnx/onnxruntime. Exporting from
PyTorch keeps the choice of FP32 islands in readable code, and it is verified on the CPU (ONNX Runtime keeps FP16
rounding of every intermediate) against the FP32 reference by the parity gate.
"""

from __future__ import annotations

import copy

ATTENTION_IMPLEMENTATION = "ruclip_fp32_softmax"


def _fp32_softmax_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """DistilBERT attention with scores, mask and softmax in FP32; Q/K/V and the weighted sum stay in FP16.

    query/key/value: [B, heads, L, head_dim] -> (output [B, L, heads, head_dim], weights [B, heads, L, L]).
    """
    import torch

    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask.float()
    weights = scores.softmax(dim=-1).to(value.dtype)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _fp16_safe_eager_mask(*args, **kwargs):
    """transformers' eager additive mask filled with FP16's lowest finite value, returned as FP32."""
    import torch
    from transformers.masking_utils import eager_mask

    kwargs["dtype"] = torch.float16
    mask = eager_mask(*args, **kwargs)
    return None if mask is None else mask.float()


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_IMPLEMENTATION, _fp32_softmax_attention)
    AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, _fp16_safe_eager_mask)


def fp16_model(model):
    """A deep copy of ``model`` (RuCLIPTiny) computing in FP16 with the FP32 islands above; ``model`` is untouched.

    encode_image(pixels float32) / encode_text(...) return float16 features; the export wrappers cast them to FP32.
    """
    from torch import nn

    class Fp32Norm(nn.Module):
        """Runs the wrapped LayerNorm (its parameters kept FP32) on an FP32 copy of the input; returns input dtype."""

        def __init__(self, norm: nn.Module):
            super().__init__()
            self.norm = norm.float()

        def forward(self, x):
            return self.norm(x.float()).to(x.dtype)

    _register_attention()
    half = copy.deepcopy(model).half()
    norms = [(name, module) for name, module in half.named_modules() if isinstance(module, nn.LayerNorm)]
    for name, norm in norms:
        parent_name, _, child = name.rpartition(".")
        parent = half.get_submodule(parent_name)
        wrapped = Fp32Norm(norm)
        if isinstance(parent, nn.Sequential) or child.isdigit():
            parent[int(child)] = wrapped
        else:
            setattr(parent, child, wrapped)
    half.transformer.config._attn_implementation = ATTENTION_IMPLEMENTATION
    return half.eval()
