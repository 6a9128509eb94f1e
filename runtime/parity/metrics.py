"""Parity metrics: numpy in, plain Python numbers out, and the verdict of metrics against thresholds."""

from __future__ import annotations

import numpy as np

from runtime.parity.thresholds import CLEAR_MARGIN, ELEMENTWISE_REL_FLOOR, Thresholds


def _unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm in float64. A zero row stays zero (cosine 0 with anything); a row with NaN or
    Inf becomes NaN, so every metric built on it is NaN and fails."""
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms == 0, 0.0, features / norms)


def row_cosines(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine of each candidate row with the same reference row. [N, D], [N, D] -> float64 [N] (NaN rows give NaN)."""
    return np.sum(_unit_rows(candidate) * _unit_rows(reference), axis=1)


def max_abs_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    """max |candidate - reference| over all elements (NaN if the candidate has NaN)."""
    return float(np.max(np.abs(np.asarray(candidate, np.float64) - np.asarray(reference, np.float64))))


def max_relative_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    """max |candidate - reference| / max |reference|: the worst error as a fraction of the largest reference value."""
    peak = float(np.max(np.abs(reference)))
    return max_abs_error(candidate, reference) / peak if peak > 0 else float("inf")


def max_elementwise_relative_error(
    candidate: np.ndarray, reference: np.ndarray, floor: float = ELEMENTWISE_REL_FLOOR
) -> float:
    """max |candidate - reference| / |reference| over the elements with |reference| >= floor × max |reference|."""
    reference = np.asarray(reference, np.float64)
    magnitude = np.abs(reference)
    peak = float(magnitude.max())
    if peak == 0:
        return float("inf")
    keep = magnitude >= floor * peak
    error = np.abs(np.asarray(candidate, np.float64) - reference)
    return float(np.max(error[keep] / magnitude[keep]))


def nonfinite_counts(features: np.ndarray) -> dict[str, int]:
    """Number of NaN and of ±Inf elements: ``{"nan": int, "inf": int}``."""
    return {"nan": int(np.isnan(features).sum()), "inf": int(np.isinf(features).sum())}


def cosine_similarities(image_features: np.ndarray, text_features: np.ndarray) -> np.ndarray:
    """Image–text cosine similarity matrix: [Ni, D], [Nt, D] -> float64 [Ni, Nt]."""
    return _unit_rows(image_features) @ _unit_rows(text_features).T


def max_similarity_change(similarities: np.ndarray, reference_similarities: np.ndarray) -> float:
    """The largest change of any image–text similarity: max |S - S_ref| over [Ni, Nt]."""
    return float(np.max(np.abs(similarities - reference_similarities)))


def top1_rows(scores: np.ndarray, reference_scores: np.ndarray, clear_margin: float = CLEAR_MARGIN) -> dict:
    """Zero-shot top-1 agreement along axis 1 of [N, K] scores, on clear-margin rows only.

    A row is clear when the reference's best score beats its second best by more than ``clear_margin`` (a row
    with a single candidate is always clear). Returns ``{"rows": N, "clear": rows that count, "agree": clear rows
    with the same top-1, "flipped": [indices of clear rows whose top-1 changed]}``.
    """
    reference_scores = np.asarray(reference_scores, np.float64)
    rows, candidates = reference_scores.shape
    if candidates >= 2:
        best_two = np.sort(reference_scores, axis=1)[:, -2:]
        margin = best_two[:, 1] - best_two[:, 0]
    else:
        margin = np.full(rows, np.inf)
    clear = margin > clear_margin
    same = np.argmax(scores, axis=1) == np.argmax(reference_scores, axis=1)
    return {
        "rows": int(rows),
        "clear": int(clear.sum()),
        "agree": int((clear & same).sum()),
        "flipped": [int(i) for i in np.flatnonzero(clear & ~same)],
    }


def top1_agreement(
    similarities: np.ndarray, reference_similarities: np.ndarray, clear_margin: float = CLEAR_MARGIN
) -> dict:
    """Top-1 agreement both ways over [Ni, Nt] similarities: each image over the probe texts (``image_to_text``)
    and each text over the probe images (``text_to_image``); see ``top1_rows``."""
    return {
        "image_to_text": top1_rows(similarities, reference_similarities, clear_margin),
        "text_to_image": top1_rows(similarities.T, reference_similarities.T, clear_margin),
    }


def feature_metrics(candidate: np.ndarray, reference: np.ndarray) -> dict:
    """How far one encoder's features [N, 768] are from the reference [N, 768]."""
    cosines = row_cosines(candidate, reference)
    return {
        "rows": int(len(reference)),
        "min_cosine": float(np.min(cosines)),
        "mean_cosine": float(np.mean(cosines)),
        "max_abs_error": max_abs_error(candidate, reference),
        "mean_reference_norm": float(np.mean(np.linalg.norm(np.asarray(reference, np.float64), axis=1))),
        "max_rel_error": max_relative_error(candidate, reference),
        "max_elementwise_rel_error": max_elementwise_relative_error(candidate, reference),
        **nonfinite_counts(candidate),
    }


def similarity_metrics(
    image_features: np.ndarray,
    text_features: np.ndarray,
    reference_image_features: np.ndarray,
    reference_text_features: np.ndarray,
    clear_margin: float = CLEAR_MARGIN,
) -> dict:
    """Similarity change and top-1 agreement of (image, text) features against the reference pair."""
    similarities = cosine_similarities(image_features, text_features)
    reference = cosine_similarities(reference_image_features, reference_text_features)
    return {
        "max_similarity_change": max_similarity_change(similarities, reference),
        "top1": top1_agreement(similarities, reference, clear_margin),
    }


def judge(metrics: dict, thresholds: Thresholds) -> list[str]:
    """Why ``metrics`` fail ``thresholds``: one sentence per broken bar, empty when they pass.

    Comparisons are written so that NaN fails them. Metrics a row does not have (the combined row has no
    reference norm) are not judged.
    """
    failures = []
    if metrics.get("nan", 0) or metrics.get("inf", 0):
        failures.append(f"{metrics.get('nan', 0)} NaN and {metrics.get('inf', 0)} Inf values in the features")
    if "min_cosine" in metrics and not metrics["min_cosine"] >= thresholds.min_cosine:
        failures.append(f"min row cosine {metrics['min_cosine']:.7f} < {thresholds.min_cosine}")
    if thresholds.max_abs_error_per_norm is not None and "mean_reference_norm" in metrics:
        bound = thresholds.max_abs_error_per_norm * metrics["mean_reference_norm"]
        if not metrics["max_abs_error"] <= bound:
            failures.append(
                f"max abs error {metrics['max_abs_error']:.3g} > {bound:.3g} "
                f"(= {thresholds.max_abs_error_per_norm:g} × mean reference norm {metrics['mean_reference_norm']:.4g})"
            )
    if "max_similarity_change" in metrics and not metrics["max_similarity_change"] <= thresholds.max_similarity_change:
        failures.append(
            f"an image–text similarity moved by {metrics['max_similarity_change']:.3g} "
            f"> {thresholds.max_similarity_change:g}"
        )
    for direction, counts in metrics.get("top1", {}).items():
        if counts["clear"] and not counts["agree"] / counts["clear"] >= thresholds.min_top1_agreement:
            failures.append(
                f"zero-shot top-1 {direction.replace('_', ' ')} agrees on {counts['agree']}/{counts['clear']} "
                f"clear-margin rows (changed: rows {counts['flipped']})"
            )
    return failures

