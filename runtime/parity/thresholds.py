"""The parity bars, per precision — the one place they live — and the Polygraphy tolerances derived from them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ruclip_tiny import spec
from ruclip_tiny.errors import RuclipTinyError
from runtime.bundle import POLYGRAPHY_DIR, PROBE_REFERENCE, BundleError, onnx_file


class ParityError(RuclipTinyError, ValueError):
    """A parity request or a stored parity result that is not as this code knows them: an unknown precision, a
    malformed report or entry."""


# A reference top-1 whose lead over the runner-up is at most this (in cosine similarity) is a near-tie: rounding
# may legitimately flip it, so such rows are left out of the top-1 agreement.
CLEAR_MARGIN = 1e-3
# Per-element relative error is taken only where |reference| >= this × max|reference|: near zero, a harmless
# absolute error reads as a huge relative one.
ELEMENTWISE_REL_FLOOR = 1e-2


@dataclass(frozen=True)
class Thresholds:
    """The bars an artifact of one precision must clear. NaN or Inf anywhere in its output always fails.

    min_cosine: every probe row's cosine with its reference row is at least this.
    max_abs_error_per_norm: max |candidate - reference| <= this × mean L2 norm of the reference rows
        (None: reported, not judged — FP16 rounding makes absolute errors scale with the feature size).
    max_similarity_change: no image–text cosine similarity over the probe moves by more than this.
    min_top1_agreement: fraction of clear-margin rows (both directions) whose zero-shot top-1 must not change
        (a direction without clear rows has nothing to judge; the report shows its clear count).
    clear_margin: reference top-1 minus top-2 must exceed this for a row to count as clear.
    """

    min_cosine: float
    max_abs_error_per_norm: float | None
    max_similarity_change: float
    min_top1_agreement: float = 1.0
    clear_margin: float = CLEAR_MARGIN

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str = "thresholds") -> Thresholds:
        """The bars as a report or a manifest entry recorded them (every field a number; the abs-error bar may be
        null)."""
        if not isinstance(data, dict):
            raise ParityError(f"{where}: expected an object, got {type(data).__name__}")
        values = {}
        for bar in fields(cls):
            if bar.name not in data:
                raise ParityError(f"{where}: {bar.name} is missing")
            value = data[bar.name]
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number and not (value is None and bar.name == "max_abs_error_per_norm"):
                raise ParityError(f"{where}: {bar.name} must be a number, got {value!r}")
            values[bar.name] = None if value is None else float(value)
        return cls(**values)


# THE thresholds. fp32 also gets a similarity-change bar (1e-4): an FP32 graph is the same arithmetic as the
# reference in another order, which typically moves similarities by ~1e-6; a change of 1e-4 — a tenth of what FP16
# rounding is allowed — means the graph computes something else. Neither row cosine nor the per-element bound
# implies it (a row can turn by up to ~4e-3 rad at cosine 0.99999).
THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(min_cosine=0.99999, max_abs_error_per_norm=1e-4, max_similarity_change=1e-4),
    "fp16": Thresholds(min_cosine=0.9999, max_abs_error_per_norm=None, max_similarity_change=1e-3),
}


def thresholds_for(precision: str) -> Thresholds:
    """The bars for ``precision`` (``fp32`` or ``fp16``); ParityError for any other."""
    if precision not in THRESHOLDS:
        raise ParityError(f"no parity thresholds for precision {precision!r}; known: {', '.join(THRESHOLDS)}")
    return THRESHOLDS[precision]


def polygraphy_command(
    bundle_root: str | Path, encoder: str, precision: str = "fp16", runner: str = "--trt"
) -> list[str]:
    """The ``polygraphy run`` argv that checks one graph of a bundle (``encoder``: visual or textual) against the
    probe's stored reference outputs with Polygraphy itself, on ``runner`` (``--trt``: a TensorRT engine built from
    it; ``--onnxrt``: ONNX Runtime), at tolerances derived from ``THRESHOLDS[precision]``.

    Polygraphy judges elements, the parity gate judges rows. A row at the gate's ``min_cosine`` c (norm unchanged)
    lies ``||d|| <= ||r|| * sqrt(2 (1 - c))`` from its reference r, so its mean absolute element error is at most
    ``||r|| * sqrt(2 (1 - c)) / sqrt(D)`` (a mean is at most the root mean square). That bound, with the largest
    reference row norm of the probe, is ``--atol``, checked on the mean (``--check-error-stat mean``); ``--rtol 0``
    leaves the verdict to it (the relative error of an element near zero says nothing). Polygraphy's default, 1e-5
    on every element, fails a correct FP16 graph, whose elements move by up to ~4e-3.
    Raises BundleError when the bundle has no probe reference to read the norms from.
    """
    root = Path(bundle_root)
    encoder_spec = spec.ENCODERS[encoder]
    (output,) = encoder_spec.outputs
    try:
        with np.load(root / PROBE_REFERENCE, allow_pickle=False) as stored:
            reference = np.asarray(stored[output.name], dtype=np.float64)
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"{root / PROBE_REFERENCE}: no {output.name} reference to derive tolerances from ({exc}); "
                          "re-export the bundle") from None
    largest_norm = float(np.linalg.norm(reference, axis=1).max())
    min_cosine = thresholds_for(precision).min_cosine
    atol = largest_norm * np.sqrt(2 * (1 - min_cosine)) / np.sqrt(reference.shape[1])
    return [
        "polygraphy", "run", str(root / onnx_file(encoder, precision)), runner,
        "--load-inputs", str(root / POLYGRAPHY_DIR / f"{encoder}_inputs.json"),
        "--load-outputs", str(root / POLYGRAPHY_DIR / f"{encoder}_outputs.json"),
        "--check-error-stat", "mean", "--atol", f"{atol:.3g}", "--rtol", "0",
    ]

