"""FP16 range report: how close the reference's intermediate tensors come to FP16's limits (probe and stress inputs).

The FP16 graph keeps selected ops in FP32 (ruclip_tiny/fp16.py); this report is the evidence for where that is needed.
For every named tensor it records the largest |x| (overflow: FP16's max is 65504) and the smallest non-zero |x|
with how many values would become subnormal (below 6.1e-5, precision lost) or flush to zero (at most 2^-25 ≈ 3e-8).
Tensors: the output of every leaf module; the residual stream (each ConvNeXt block, the DistilBERT embeddings and
each DistilBERT layer); the input of every LayerNorm (in DistilBERT's post-norm layers the residual sum exists only
there); and each attention's raw scores q·kᵀ/√d before the mask is added (a functional op no module outputs).
"""

from __future__ import annotations

import math
import time

import numpy as np

from ruclip_tiny import spec

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0**-14  # 6.1e-5: below this FP16 is subnormal and loses precision
FP16_MIN_SUBNORMAL = 2.0**-24  # 6.0e-8
FP16_FLUSH = 2.0**-25  # a non-zero |x| at or below this rounds to 0 in FP16
# A tensor within a factor 4 of FP16's max has no room for an input a little more extreme than the ones seen.
NEAR_MAX_FACTOR = 4.0
NEAR_MAX = FP16_MAX / NEAR_MAX_FACTOR
# "In bulk": more than this fraction of a tensor's non-zero values would flush to zero. A few isolated flushes
# (GELU tails, a softmax far from its maximum) change nothing; a large share means lost signal.
UNDERFLOW_BULK_FRACTION = 0.01
TOP_COUNT = 15

# Stress texts that fill all 77 positions, and ones that leave a single token (or none) between [CLS] and [SEP].
STRESS_LONG_TEXTS = {
    "repeated word x100": " ".join(["кошка"] * 100),
    "digit strings x40": " ".join(["1234567890"] * 40),
    "punctuation run x100": "!" * 100,
    "emoji x100 ([UNK] run)": " ".join(["🚀"] * 100),
}
STRESS_SHORT_TEXTS = {
    "one character": "я",
    "one emoji": "🚀",
    "empty ([CLS][SEP] only)": "",
}
_STRESS_NOISE_SEED = 0


class _TensorStats:
    """Running figures of one named tensor over every batch it was seen in."""

    __slots__ = (
        "max_abs", "max_at", "min_nonzero", "min_at", "values", "zeros", "flushed", "subnormal", "above_max",
        "nonfinite",
    )

    def __init__(self) -> None:
        self.max_abs = 0.0
        self.max_at = None
        self.min_nonzero = math.inf
        self.min_at = None
        self.values = self.zeros = self.flushed = self.subnormal = self.above_max = self.nonfinite = 0

    def update(self, tensor, row_labels: list[str], batch_label: str) -> None:
        # numpy, not torch: hundreds of small reductions per forward pass cost more in thread start-up and
        # contention than in arithmetic, and numpy runs them on the calling thread.
        a = np.abs(tensor.detach().float().cpu().numpy())
        # Per-row maxima say WHICH input produced the extreme; tensors without the batch as first dimension
        # (position embeddings [1, L, C]) are attributed to the batch as a whole.
        per_row = a.ndim >= 2 and a.shape[0] == len(row_labels)
        rows = len(row_labels) if per_row else 1
        labels = row_labels if per_row else [batch_label]
        a = a.reshape(rows, -1)  # copies a permuted (channels-last) tensor once
        row_size = a.shape[1]

        row_max = a.max(axis=1)
        if not np.isfinite(row_max).all():
            # NaN/Inf already in FP32 is a defect of its own; count it and measure the finite values.
            finite = np.isfinite(a)
            self.nonfinite += int(a.size - np.count_nonzero(finite))
            a = np.where(finite, a, 0)
            row_max = a.max(axis=1)
        i = int(row_max.argmax())
        if float(row_max[i]) > self.max_abs or self.max_at is None:
            self.max_abs, self.max_at = float(row_max[i]), labels[i]
        if self.max_abs > FP16_MAX:
            self.above_max += int(np.count_nonzero(a > FP16_MAX))

        # Underflow concerns only the rare small values: pick them out once, count on that subset.
        small_at = np.flatnonzero(a < FP16_MIN_NORMAL)
        small = a.reshape(-1)[small_at]
        zeros = int(np.count_nonzero(small == 0))
        self.values += a.size
        self.zeros += zeros
        self.flushed += int(np.count_nonzero(small <= FP16_FLUSH)) - zeros
        self.subnormal += int(np.count_nonzero(small > FP16_FLUSH))

        if small.size > zeros:  # the smallest non-zero value is among the small ones
            candidates, positions = small, small_at
        elif zeros:
            positions = np.flatnonzero(a)
            candidates = a.reshape(-1)[positions]
        else:
            candidates, positions = a.reshape(-1), None
        if candidates.size:
            masked = np.where(candidates > 0, candidates, np.inf)
            k = int(masked.argmin())
            index = k if positions is None else int(positions[k])
            if float(masked[k]) < self.min_nonzero:
                self.min_nonzero, self.min_at = float(masked[k]), labels[index // row_size]

    def as_dict(self) -> dict:
        nonzero = self.values - self.zeros
        return {
            "max_abs": self.max_abs,
            "max_at": self.max_at,
            "min_nonzero_abs": None if math.isinf(self.min_nonzero) else self.min_nonzero,
            "min_at": self.min_at,
            "values": self.values,
            "zeros": self.zeros,
            "fp16_flushed": self.flushed,
            "fp16_flushed_fraction": self.flushed / nonzero if nonzero else 0.0,
            "fp16_subnormal": self.subnormal,
            "fp16_subnormal_fraction": self.subnormal / nonzero if nonzero else 0.0,
            "above_fp16_max": self.above_max,
            "nonfinite": self.nonfinite,
        }


class _Recorder:
    """Forward hooks that feed ``_TensorStats`` by tensor name; removed by ``close``."""

    def __init__(self) -> None:
        self.stats: dict[str, _TensorStats] = {}
        self.handles: list = []
        self.row_labels: list[str] = []
        self.batch_label = ""

    def record(self, name: str, value) -> None:
        tensor = _first_tensor(value)
        if tensor is None or not tensor.is_floating_point() or tensor.numel() == 0:
            return
        self.stats.setdefault(name, _TensorStats()).update(tensor, self.row_labels, self.batch_label)

    def hook_output(self, module, name: str) -> None:
        self.handles.append(module.register_forward_hook(lambda _m, _args, out: self.record(name, out)))

    def hook_input(self, module, name: str) -> None:
        self.handles.append(module.register_forward_pre_hook(lambda _m, args: self.record(name, args[0])))

    def hook_attention_scores(self, module, name: str) -> None:
        def scores(attention, args, _out) -> None:
            self.record(name, _attention_scores(attention, args[0]))

        self.handles.append(module.register_forward_hook(scores))

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _first_tensor(value):
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):  # transformers' ModelOutput is a dict
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            if isinstance(item, torch.Tensor):
                return item
    return None


def _attention_scores(attention, hidden):
    """Raw scores q·kᵀ·scaling of a DistilBERT attention: float32 [B, heads, L, L], before the mask is added.

    Recomputed with the module's own weights through F.linear rather than by calling q_lin/k_lin, which would run
    their hooks a second time. The mask itself (finfo(float32).min) is a known FP16 trap handled by the FP16 pass.
    """
    from torch.nn import functional as F

    batch, length, _ = hidden.shape
    heads = attention.n_heads
    q = F.linear(hidden, attention.q_lin.weight, attention.q_lin.bias).view(batch, length, heads, -1).transpose(1, 2)
    k = F.linear(hidden, attention.k_lin.weight, attention.k_lin.bias).view(batch, length, heads, -1).transpose(1, 2)
    scaling = getattr(attention, "scaling", q.shape[-1] ** -0.5)
    return (q @ k.transpose(2, 3)) * scaling


def _install_hooks(model, recorder: _Recorder) -> None:
    from torch import nn

    for name, module in model.named_modules():
        if not name:
            continue
        if not any(True for _ in module.children()):
            recorder.hook_output(module, name)
        if isinstance(module, nn.LayerNorm):
            recorder.hook_input(module, f"{name}:input")
        if all(hasattr(module, attr) for attr in ("q_lin", "k_lin", "n_heads")):
            recorder.hook_attention_scores(module, f"{name}:scores")
    # The residual stream.
    for i, stage in enumerate(model.visual.stages):
        for j, block in enumerate(stage.blocks):
            recorder.hook_output(block, f"visual.stages.{i}.blocks.{j}")
    distilbert = model.transformer
    recorder.hook_output(distilbert.embeddings, "transformer.embeddings")
    for i, layer in enumerate(distilbert.transformer.layer):
        recorder.hook_output(layer, f"transformer.transformer.layer.{i}")


def scan_activations(
    model,
    pixels: np.ndarray | None,
    input_ids: np.ndarray | None,
    attention_mask: np.ndarray | None,
    image_labels: list[str] | None = None,
    text_labels: list[str] | None = None,
) -> dict[str, dict]:
    """Run the reference once per encoder with hooks on every named tensor; return {tensor name: figures}.

    pixels: float32 [Ni, 3, 224, 224] or None (skip the image encoder); input_ids, attention_mask: int64 [Nt, L] or
    None (skip the text encoder). image_labels / text_labels name the rows (default "image i" / "text i") so each
    extreme says which input produced it.
    Figures per tensor: max_abs and max_at (row label), min_nonzero_abs and min_at, values, zeros, fp16_flushed
    (non-zero values that round to 0 in FP16) and its fraction of the non-zero values, fp16_subnormal and fraction,
    above_fp16_max, nonfinite (NaN/Inf values, counted and then measured as 0).
    Tensor names: module names ("visual.stages.3.blocks.2.mlp.fc2"), "<LayerNorm>:input", "<attention>:scores";
    model.logit_scale and the cosine head are not part of either encoder.
    """
    import torch

    if model.training:
        raise ValueError("scan_activations needs the model in eval mode (dropout would change the figures)")
    recorder = _Recorder()
    _install_hooks(model, recorder)
    try:
        with torch.inference_mode():
            if pixels is not None:
                recorder.row_labels = list(image_labels or [f"image {i}" for i in range(len(pixels))])
                recorder.batch_label = "all images"
                model.encode_image(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)))
            if input_ids is not None:
                recorder.row_labels = list(text_labels or [f"text {i}" for i in range(len(input_ids))])
                recorder.batch_label = "all texts"
                model.encode_text(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
    finally:
        recorder.close()
    return {name: stats.as_dict() for name, stats in recorder.stats.items()}


def stress_pixels() -> tuple[np.ndarray, list[str]]:
    """Extreme but valid preprocessed images: float32 [5, 3, 224, 224] and their labels.

    Every value is the normalised image of a 0 or 255 pixel (per channel: (0 - mean)/std or (1 - mean)/std), the
    most extreme inputs the preprocessing can produce: all black, all white, 1-px and 16-px black/white
    checkerboards, and salt-and-pepper noise drawn per value.
    """
    mean = np.asarray(spec.IMAGE_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.IMAGE_STD, dtype=np.float32)[:, None, None]
    low, high = (0 - mean) / std, (1 - mean) / std  # [3, 1, 1]
    size = spec.IMAGE_SIZE
    yy, xx = np.mgrid[0:size, 0:size]
    noise = np.random.default_rng(_STRESS_NOISE_SEED).random((3, size, size)) < 0.5
    masks = {
        "stress: all pixels at the normalised min (black)": np.zeros((3, size, size), dtype=bool),
        "stress: all pixels at the normalised max (white)": np.ones((3, size, size), dtype=bool),
        "stress: 1-px checkerboard min/max": np.broadcast_to((yy + xx) % 2 == 0, (3, size, size)),
        "stress: 16-px checkerboard min/max": np.broadcast_to((yy // 16 + xx // 16) % 2 == 0, (3, size, size)),
        "stress: salt-and-pepper noise min/max": noise,
    }
    pixels = np.stack([np.where(mask, high, low) for mask in masks.values()]).astype(np.float32)
    return pixels, list(masks)


def stress_inputs(tokenizer) -> dict:
    """The stress set: extreme images, texts that fill all 77 positions, and texts of one token or none.

    Returns {"pixels": float32 [5, 3, 224, 224], "image_labels": [5 str], "texts": [Nt str],
    "input_ids", "attention_mask": int64 [Nt, 77], "text_labels": [Nt str]}.
    """
    pixels, image_labels = stress_pixels()
    named = {**STRESS_LONG_TEXTS, **STRESS_SHORT_TEXTS}
    input_ids, attention_mask = tokenizer(list(named.values()))
    return {
        "pixels": pixels,
        "image_labels": image_labels,
        "texts": list(named.values()),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "text_labels": [f"stress: {label}" for label in named],
    }


def _encoder_of(name: str) -> str:
    return "visual" if name.startswith("visual.") else "textual"


def _headroom(max_abs: float) -> float | None:
    return FP16_MAX / max_abs if max_abs > 0 else None


def _distinct_tensors(tensors: dict[str, dict]) -> list[dict]:
    """Merge names that record the same tensor (a Dropout or Identity passes its input on; a LayerNorm's input is
    often the previous module's output): identical figures everywhere mean the same values."""
    groups: dict[tuple, dict] = {}
    for name, figures in tensors.items():
        key = (
            figures["max_abs"], figures["min_nonzero_abs"], figures["values"], figures["zeros"],
            figures["fp16_flushed"], figures["fp16_subnormal"],
        )
        if key in groups:
            groups[key]["same_as"].append(name)
        else:
            groups[key] = {"tensor": name, "same_as": [], **figures}
    return list(groups.values())


def summarize_activations(tensors: dict[str, dict]) -> dict:
    """The JSON-able summary of ``scan_activations`` figures: per-encoder maxima, top tensors, flags."""
    distinct = _distinct_tensors(tensors)
    ranked = sorted(distinct, key=lambda t: t["max_abs"], reverse=True)

    def brief(entry: dict) -> dict:
        return {
            "tensor": entry["tensor"],
            "same_as": entry["same_as"],
            "encoder": _encoder_of(entry["tensor"]),
            "max_abs": entry["max_abs"],
            "max_at": entry["max_at"],
            "headroom": _headroom(entry["max_abs"]),
        }

    encoders = {}
    for encoder in spec.ENCODERS:
        own = [t for t in ranked if _encoder_of(t["tensor"]) == encoder]
        if own:
            encoders[encoder] = brief(own[0])
    flags = []
    for entry in ranked:
        if entry["max_abs"] > NEAR_MAX:
            flags.append({
                **brief(entry),
                "reason": f"|x| = {entry['max_abs']:.4g} is above 65504/{NEAR_MAX_FACTOR:g} = {NEAR_MAX:g}: "
                "FP16 overflow within reach; keep this op in FP32 or rescale",
            })
        if entry["nonfinite"]:
            flags.append({
                **brief(entry),
                "reason": f"{entry['nonfinite']} NaN/Inf values already in the FP32 reference",
            })
        if entry["fp16_flushed_fraction"] > UNDERFLOW_BULK_FRACTION:
            flags.append({
                **brief(entry),
                "fp16_flushed_fraction": entry["fp16_flushed_fraction"],
                "reason": f"{entry['fp16_flushed_fraction']:.1%} of the non-zero values are at most 2^-25 and flush "
                "to zero in FP16",
            })
    # FP16 LayerNorm would square its input: above 256, x² passes 65504. Informational: the FP16 graph keeps
    # LayerNorm in FP32, and this list is why that matters.
    square_limit = math.sqrt(FP16_MAX)
    layernorm_squares = [
        {"tensor": name, "max_abs": figures["max_abs"], "max_at": figures["max_at"]}
        for name, figures in tensors.items()
        if name.endswith(":input") and figures["max_abs"] > square_limit
    ]
    overall = brief(ranked[0]) if ranked else None
    smallest = min(
        (t for t in distinct if t["min_nonzero_abs"] is not None), key=lambda t: t["min_nonzero_abs"], default=None
    )
    return {
        "fp16": {
            "max": FP16_MAX,
            "min_normal": FP16_MIN_NORMAL,
            "min_subnormal": FP16_MIN_SUBNORMAL,
            "flush_at_or_below": FP16_FLUSH,
            "near_max_threshold": NEAR_MAX,
            "underflow_bulk_fraction": UNDERFLOW_BULK_FRACTION,
        },
        "overall": overall,
        "encoders": encoders,
        "top": [brief(entry) for entry in ranked[:TOP_COUNT]],
        "flags": flags,
        "smallest_nonzero": None if smallest is None else {
            "tensor": smallest["tensor"], "min_nonzero_abs": smallest["min_nonzero_abs"], "min_at": smallest["min_at"],
        },
        "most_flushed": sorted(
            ({"tensor": t["tensor"], "fp16_flushed_fraction": t["fp16_flushed_fraction"],
              "fp16_subnormal_fraction": t["fp16_subnormal_fraction"]} for t in distinct),
            key=lambda t: t["fp16_flushed_fraction"], reverse=True,
        )[:5],
        "layernorm_inputs_over_fp16_square": layernorm_squares,
        "tensors": tensors,
    }


def activation_report(
    model,
    tokenizer,
    probe_pixels: np.ndarray,
    probe_ids: np.ndarray,
    probe_mask: np.ndarray,
    image_names: list[str] | None = None,
    texts: list[str] | None = None,
) -> dict:
    """FP16 range report of the reference on the probe set plus the stress set (``stress_inputs``).

    probe_pixels: float32 [Ni, 3, 224, 224]; probe_ids, probe_mask: int64 [Nt, 77]; image_names / texts label the
    probe rows. Returns ``summarize_activations`` of the scan plus "inputs" (every row label) and "seconds".
    """
    started = time.perf_counter()
    stress = stress_inputs(tokenizer)
    image_labels = [f"probe: {name}" for name in (image_names or [f"image {i}" for i in range(len(probe_pixels))])]
    text_labels = [
        f"probe text {i}: {text[:40]!r}" if texts is not None else f"probe text {i}" for i, text in
        enumerate(texts if texts is not None else [""] * len(probe_ids))
    ]
    image_labels += stress["image_labels"]
    text_labels += stress["text_labels"]
    tensors = scan_activations(
        model,
        np.concatenate([probe_pixels, stress["pixels"]]),
        np.concatenate([probe_ids, stress["input_ids"]]),
        np.concatenate([probe_mask, stress["attention_mask"]]),
        image_labels=image_labels,
        text_labels=text_labels,
    )
    report = summarize_activations(tensors)
    report["inputs"] = {"images": image_labels, "texts": text_labels}
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report


def format_activation_report(report: dict, lines: int = 5) -> str:
    """A few lines for the export's progress output: per-encoder maxima with headroom, the top tensors, flags."""
    out = []
    for encoder, entry in report["encoders"].items():
        out.append(
            f"FP16 range, {encoder}: max |x| {entry['max_abs']:.4g} at {entry['tensor']} ({entry['max_at']}), "
            f"headroom x{entry['headroom']:.1f} below 65504"
        )
    for entry in report["top"][:lines]:
        out.append(f"  {entry['max_abs']:>10.4g}  {entry['tensor']}  ({entry['max_at']})")
    smallest = report.get("smallest_nonzero")
    if smallest is not None:
        out.append(f"  smallest non-zero |x| {smallest['min_nonzero_abs']:.3g} at {smallest['tensor']}")
    if report["flags"]:
        for flag in report["flags"]:
            out.append(f"  FLAG {flag['tensor']}: {flag['reason']}")
    else:
        out.append(
            f"  no flags: nothing above 65504/{NEAR_MAX_FACTOR:g}, no tensor with more than "
            f"{UNDERFLOW_BULK_FRACTION:.0%} of its values flushed to zero in FP16"
        )
    return "\n".join(out)
