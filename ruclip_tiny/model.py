"""The RuCLIP tiny module, with the published attribute names and the numerics of the original 2022 stack.

    visual      timm ConvNeXt-tiny, no classifier           pixels float32 [B, 3, 224, 224] -> [B, 768]
    transformer DistilBERT (3 layers, width 264)            input_ids, attention_mask int64 [B, L] -> [B, L, 264]
    final_ln    Linear(264, 768) on the [CLS] hidden state  -> [B, 768]
    logit_scale a log value; logits use its exp()

The checkpoint was trained with timm 0.5.4, whose LayerNorm2d took an UNBIASED variance whenever its input was not
contiguous. In ConvNeXt-tiny that is the case for the downsample norms of stages 1-3 (their input comes out of the
channels-last blocks of the previous stage); the stem norm and the head norm saw contiguous inputs and used the
ordinary biased variance. Today's timm always uses the biased one, so this module swaps those three norms for
``UnbiasedLayerNorm2d``: the reference reproduces what the weights were trained with, not today's approximation.
"""

from __future__ import annotations

import torch
from torch import nn

from . import spec

# Downsample norms that saw a non-contiguous input in timm 0.5.4 (index into ``visual.stages``).
LEGACY_UNBIASED_STAGES = (1, 2, 3)


class UnbiasedLayerNorm2d(nn.LayerNorm):
    """Channel LayerNorm of an NCHW tensor with the unbiased (N-1) variance, as timm 0.5.4 computed it.

    x: float [B, C, H, W] -> float [B, C, H, W]; parameters are named like nn.LayerNorm's (weight, bias).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same operations, in the same order, as timm 0.5.4's non-contiguous branch.
        var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=1)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def build_image_encoder() -> nn.Module:
    """timm ``convnext_tiny`` (num_classes=0, 768-d output) with the original downsample-norm numerics."""
    import timm

    visual = timm.create_model(spec.IMAGE_ENCODER_NAME, pretrained=False, num_classes=0)
    for index in LEGACY_UNBIASED_STAGES:
        downsample = visual.stages[index].downsample
        norm = downsample[0]
        legacy = UnbiasedLayerNorm2d(norm.normalized_shape, eps=norm.eps)
        legacy.load_state_dict(norm.state_dict())
        downsample[0] = legacy
    return visual


def build_text_encoder() -> nn.Module:
    """``DistilBertModel`` with the published configuration (see ``spec.TEXT_ENCODER_CONFIG``)."""
    from transformers import DistilBertConfig, DistilBertModel

    config = DistilBertConfig(**spec.TEXT_ENCODER_CONFIG)
    # Eager attention is the plain softmax(QK^T/sqrt(d) + mask)V that transformers 4.12.3 computed; it also exports
    # to the smallest ONNX graph. transformers 4.12.3 masked with -inf and so returned NaN for a row whose mask is
    # all zeros; today's finite mask returns a number instead. The tokenizer always attends to [CLS], so no real
    # input has such a row.
    config._attn_implementation = "eager"
    return DistilBertModel(config)


class RuCLIPTiny(nn.Module):
    """RuCLIP tiny as published: ``visual``, ``transformer``, ``final_ln``, ``logit_scale``.

    ``encode_image`` and ``encode_text`` return UNnormalised features, exactly like the original.
    """

    def __init__(self) -> None:
        super().__init__()
        self.visual = build_image_encoder()
        self.transformer = build_text_encoder()
        self.final_ln = nn.Linear(spec.TEXT_ENCODER_CONFIG["dim"], spec.EMBED_DIM)
        self.logit_scale = nn.Parameter(torch.ones([]) * spec.LOGIT_SCALE_INIT)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.stem[0].weight.dtype

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: float32 [B, 3, 224, 224] (normalised, see ``image_transform``) -> image_features [B, 768]."""
        return self.visual(pixels.type(self.dtype))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: int64 [B, L], L <= 512 -> text_features [B, 768] (from the [CLS] token)."""
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.final_ln(hidden[:, 0, :])

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logits_per_image [B_img, B_txt], logits_per_text [B_txt, B_img]): exp(logit_scale) * cosine."""
        image_features = self.encode_image(pixels)
        text_features = self.encode_text(input_ids, attention_mask)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()
