"""The one description of RuCLIP tiny: encoder I/O, dynamic dimensions, limits and preprocessing constants.

Torch-free on purpose: export, engine building, manifests, Triton configs and the runtime all read this module,
and a deployment without torch must be able to import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Preprocessing of the original model (torchvision: Resize(224), CenterCrop(224), RGB, ToTensor, Normalize).
IMAGE_SIZE = 224
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

# Tokenization of the original model (DistilBertTokenizer, cased, padded and truncated to 77 tokens).
MAX_TEXT_LENGTH = 77

EMBED_DIM = 768
LOGIT_SCALE_INIT = math.log(1 / 0.07)  # the value the original module is constructed with (a log)

# The published text encoder: DistilBERT, 3 layers, width 264 (DistilBertConfig keyword arguments).
TEXT_ENCODER_CONFIG = {
    "vocab_size": 30522,
    "max_position_embeddings": 512,
    "n_layers": 3,
    "n_heads": 12,
    "dim": 264,
    "hidden_dim": 792,
}
# The published image encoder: timm ConvNeXt-tiny without classifier (768-d pooled, normed output).
IMAGE_ENCODER_NAME = "convnext_tiny"
PARAMETER_COUNT = 38_317_537

# The name the bundle and every report uses for the model.
MODEL_ID = "ruclip-tiny"


@dataclass(frozen=True)
class Dim:
    """A dynamic dimension: its symbolic name and the inclusive range a backend must accept (max None = unbounded)."""

    name: str
    min: int
    max: int | None


BATCH = Dim("batch", 1, None)
SEQUENCE = Dim("seq", 1, MAX_TEXT_LENGTH)


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: numpy dtype name and shape (ints are fixed, Dims are dynamic)."""

    name: str
    dtype: str
    shape: tuple[int | Dim, ...]

    @property
    def symbolic_shape(self) -> list[int | str]:
        """The shape with dynamic dimensions as their names, e.g. ``["batch", 3, 224, 224]``."""
        return [d.name if isinstance(d, Dim) else d for d in self.shape]

    @property
    def dynamic_dims(self) -> dict[int, Dim]:
        """Axis index -> Dim for every dynamic axis."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, Dim)}


@dataclass(frozen=True)
class EncoderSpec:
    """One encoder of the model as every artifact sees it."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def dims(self) -> tuple[Dim, ...]:
        """The distinct dynamic dimensions of the inputs, in first-seen order."""
        seen: dict[str, Dim] = {}
        for tensor in self.inputs:
            for dim in tensor.dynamic_dims.values():
                seen.setdefault(dim.name, dim)
        return tuple(seen.values())


VISUAL = EncoderSpec(
    name="visual",
    inputs=(TensorSpec("pixels", "float32", (BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)),),
    outputs=(TensorSpec("image_features", "float32", (BATCH, EMBED_DIM)),),
)
TEXTUAL = EncoderSpec(
    name="textual",
    inputs=(
        TensorSpec("input_ids", "int64", (BATCH, SEQUENCE)),
        TensorSpec("attention_mask", "int64", (BATCH, SEQUENCE)),
    ),
    outputs=(TensorSpec("text_features", "float32", (BATCH, EMBED_DIM)),),
)
ENCODERS = {spec.name: spec for spec in (VISUAL, TEXTUAL)}


def io_mismatches(
    encoder: EncoderSpec,
    inputs: list[tuple[str, str, list[int | str | None]]],
    outputs: list[tuple[str, str, list[int | str | None]]],
    dim_names: bool = False,
) -> list[str]:
    """How a graph's or engine's inputs and outputs differ from ``encoder``'s: one sentence each, [] when they match.

    inputs, outputs: ``(name, numpy dtype name, shape)`` per tensor, in the artifact's order; a shape holds an int
    for a fixed axis and a str (ONNX ``dim_param``) or None (unnamed, TensorRT's -1) for a dynamic one.
    dim_names: dynamic axes must carry the spec's names (``batch``, ``seq``), as export writes them; otherwise any
    dynamic axis will do (an axis the spec calls dynamic must never be fixed: a fixed batch refuses other batches).
    """
    problems = []
    for kind, actual, wanted in (("inputs", inputs, encoder.inputs), ("outputs", outputs, encoder.outputs)):
        names = [name for name, _, _ in actual]
        if names != [tensor.name for tensor in wanted]:
            problems.append(f"{kind} are {names}, the spec says {[tensor.name for tensor in wanted]}")
            continue
        for (name, dtype, shape), tensor in zip(actual, wanted):
            if dtype != tensor.dtype:
                problems.append(f"{name} is {dtype}, the spec says {tensor.dtype}")
            if not _shape_fits(list(shape), tensor, dim_names):
                problems.append(f"{name} has shape {list(shape)}, the spec says {tensor.symbolic_shape}")
    return problems


def _shape_fits(shape: list[int | str | None], tensor: TensorSpec, dim_names: bool) -> bool:
    if len(shape) != len(tensor.shape):
        return False
    for actual, wanted in zip(shape, tensor.shape):
        if isinstance(wanted, Dim):
            dynamic = actual is None or isinstance(actual, str)
            if not dynamic or (dim_names and actual != wanted.name):
                return False
        elif isinstance(actual, bool) or actual != wanted:
            return False
    return True
