"""Parity of a bundle's artifacts against the reference outputs stored in its probe: metrics, thresholds, verdicts.

Torch-free: ``ruclip-tiny parity BUNDLE`` runs on a GPU box with numpy and onnxruntime only (matplotlib, when
installed, draws ``parity/errors.png``). It writes ``parity/report.json`` and records each artifact's result in
the manifest, marking it deployable only when it passed. ``--backend torch|tensorrt|auto`` runs the same probe
through any runtime backend instead (``parity/report.<backend>.json``): a backend that runs manifest artifacts
(TensorRT engines) gets those marked; the torch backend's rows (``torch:visual.fp32``) are recorded only.

Every artifact is judged on its own: a visual graph by its image features against the reference and by the
image–text similarities it gives with the REFERENCE text features (a textual graph symmetrically), so a bad
textual graph never gets the visual one marked not deployable. A ``combined.<precision>`` row then judges the
two graphs of a precision together, as a deployment uses them.

``parity/report.json``: schema_version, bundle, date (ISO 8601, UTC), backend ("onnxruntime" or another),
onnxruntime_version, providers (as requested, with options), backend_options, precisions (those run), skipped
{precision: why the backend cannot run it here}, probe {images, texts},
thresholds {precision: Thresholds fields}, passed (every entry passed), written {report, manifest, plot,
plot_skipped}, results {key: entry} for keys ``visual.fp32``, ``textual.fp32``, ``combined.fp32``, … .

An entry, stored as it is in ``manifest["parity"][key]`` too:
    kind "artifact" | "combined"; artifact (its key); encoder (artifacts) or artifacts (combined: the two keys);
    precision; file, sha256 (artifacts: the manifest's path and sha256 of the graph that was run);
    backend, onnxruntime_version, provider (the provider the session really used), date, probe, thresholds;
    passed; failures [one sentence per broken bar]; error (why it could not be judged at all, else null);
    and once it ran: rows, min_cosine, mean_cosine, max_abs_error, mean_reference_norm (artifacts only),
    max_rel_error, max_elementwise_rel_error, nan, inf, max_similarity_change,
    top1 {image_to_text, text_to_image: {rows, clear, agree, flipped [row indices]}}.
NaN/Inf metric values are written as null (the nan/inf counts keep the fact). Every artifact that was run gets
``manifest["artifacts"][key]["deployable"] = passed``; an artifact the manifest lacks is only in the report.
"""

from __future__ import annotations

import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ruclip_tiny import spec
from ruclip_tiny.fileio import atomic_path, atomic_write_json
from runtime.backends import Backend, BackendError, plan_backend
from runtime.backends.onnxruntime import OnnxRuntimeEncoder, Provider, provider_name, resolve_providers
from runtime.bundle import (
    MANIFEST,
    PARITY_DIR,
    PRECISIONS,
    PROBE_INPUTS,
    PROBE_REFERENCE,
    Bundle,
    BundleError,
    artifact_key,
    contained_path,
)

REPORT_FILE = f"{PARITY_DIR}/report.json"
PLOT_FILE = f"{PARITY_DIR}/errors.png"
REPORT_SCHEMA_VERSION = 1
BACKEND = "onnxruntime"
DEFAULT_BATCH_SIZE = 16

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

    def to_dict(self) -> dict:
        return asdict(self)


# THE thresholds. fp32 also gets a similarity-change bar (1e-4): an FP32 graph is the same arithmetic as the
# reference in another order, which typically moves similarities by ~1e-6; a change of 1e-4 — a tenth of what FP16
# rounding is allowed — means the graph computes something else. Neither row cosine nor the per-element bound
# implies it (a row can turn by up to ~4e-3 rad at cosine 0.99999).
THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(min_cosine=0.99999, max_abs_error_per_norm=1e-4, max_similarity_change=1e-4),
    "fp16": Thresholds(min_cosine=0.9999, max_abs_error_per_norm=None, max_similarity_change=1e-3),
}


def thresholds_for(precision: str) -> Thresholds:
    """The bars for ``precision`` (``fp32`` or ``fp16``)."""
    if precision not in THRESHOLDS:
        raise ValueError(f"no parity thresholds for precision {precision!r}; known: {', '.join(THRESHOLDS)}")
    return THRESHOLDS[precision]


def polygraphy_command(bundle_root: str | Path, encoder: str, precision: str = "fp16", runner: str = "--trt") -> list[str]:
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
    from runtime.bundle import POLYGRAPHY_DIR, onnx_file

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


# --- metrics: numpy in, plain Python numbers out ---------------------------------------------------------------


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


# --- the probe stored in the bundle ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A bundle's probe set and its reference outputs.

    inputs: pixels float32 [Ni,3,224,224]; input_ids, attention_mask int64 [Nt,seq] (plus image_names, texts).
    reference: image_features float32 [Ni,768]; text_features float32 [Nt,768].
    """

    inputs: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]

    @property
    def images(self) -> int:
        return len(self.reference[spec.VISUAL.outputs[0].name])

    @property
    def texts(self) -> int:
        return len(self.reference[spec.TEXTUAL.outputs[0].name])


def _read_npz(path: Path, required: list[str]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise BundleError(
            f"{path} is missing: parity needs the probe set and its reference outputs — "
            "re-export the bundle (ruclip-tiny export --force)"
        )
    arrays = {}
    try:
        # allow_pickle=False: a bundle may come from elsewhere, and unpickling runs code
        with np.load(path, allow_pickle=False) as data:
            for name in data.files:
                arrays[name] = _read_array(data, name, path)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{path} cannot be read ({exc}); re-export the bundle (ruclip-tiny export --force)") from None
    missing = [name for name in required if name not in arrays]
    if missing:
        raise BundleError(f"{path} lacks {', '.join(missing)}; re-export the bundle (ruclip-tiny export --force)")
    return arrays


def _read_array(data, name: str, path: Path) -> np.ndarray:
    """One array of an open .npz; an object array (pickled Python objects) is refused by name, never unpickled."""
    try:
        return data[name]
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise
        raise BundleError(
            f"{path}: {name} is an object array (pickled Python objects), which parity never loads: unpickling runs "
            "code — a probe holds only numbers and strings; re-export the bundle (ruclip-tiny export --force)"
        ) from None


def _verify_probe_files(bundle: Bundle) -> None:
    """Check the probe files parity reads against the size and sha256 the manifest lists for them
    (``manifest["probe"]["files"]``): a changed reference would silently move every verdict, so a probe file the
    manifest does not vouch for is refused too."""
    listed = {entry["path"]: entry for entry in (bundle.manifest.get("probe") or {}).get("files", [])}
    for relative in (PROBE_INPUTS, PROBE_REFERENCE):
        if relative not in listed:
            raise BundleError(
                f"{bundle.root / MANIFEST}: probe.files lists no size and sha256 for {relative}, so its reference "
                "cannot be trusted; re-export the bundle (ruclip-tiny export --force)"
            )
        bundle.verify_file("probe", listed[relative])


def load_probe(bundle: Bundle) -> Probe:
    """Read and check ``probe/inputs.npz`` and ``probe/reference.npz``: sha256 against the manifest when it lists
    them, required arrays present, row counts agreeing, reference features finite."""
    _verify_probe_files(bundle)
    encoders = (spec.VISUAL, spec.TEXTUAL)
    inputs = _read_npz(bundle.path(PROBE_INPUTS), [t.name for e in encoders for t in e.inputs])
    reference = _read_npz(bundle.path(PROBE_REFERENCE), [e.outputs[0].name for e in encoders])
    for encoder_spec in encoders:
        output = encoder_spec.outputs[0].name
        features = reference[output]
        if features.ndim != 2 or features.shape[1] != spec.EMBED_DIM or features.dtype.kind != "f":
            raise BundleError(
                f"{bundle.path(PROBE_REFERENCE)}: {output} must be float [N, {spec.EMBED_DIM}], got "
                f"{features.dtype} {list(features.shape)}; re-export the bundle (ruclip-tiny export --force)"
            )
        if not np.isfinite(features).all():
            raise BundleError(
                f"{bundle.path(PROBE_REFERENCE)}: {output} holds NaN or Inf, so nothing can be compared with it; "
                "re-export the bundle (ruclip-tiny export --force)"
            )
        for tensor in encoder_spec.inputs:
            if len(inputs[tensor.name]) != len(features):
                raise BundleError(
                    f"{bundle.root}: probe {tensor.name} has {len(inputs[tensor.name])} rows but the reference "
                    f"{output} has {len(features)}; re-export the bundle (ruclip-tiny export --force)"
                )
    return Probe(inputs, reference)


# --- running a bundle's graphs -----------------------------------------------------------------------------------


def parity_providers(providers: Sequence[Provider] | None = None) -> list[Provider]:
    """The ONNX Runtime providers for a parity run: ``providers`` (names, aliases such as ``cpu``/``cuda``, or
    (name, options) pairs), or CUDA (when this build has it) then CPU.

    A plain ``CUDAExecutionProvider`` gets ``use_tf32=0``: ONNX Runtime turns TF32 on by default, and TF32
    matmuls (a 10-bit mantissa) would fail an FP32 graph for a reason that is not in the graph. Pass
    ``("CUDAExecutionProvider", {"use_tf32": "1"})`` to measure TF32 on purpose.
    """
    return resolve_providers(providers)


def _describe_providers(providers: Sequence[Provider]) -> list:
    return [p if isinstance(p, str) else [p[0], dict(p[1])] for p in providers]


def _failed(entry: dict, reason: str) -> dict:
    return {**entry, "passed": False, "error": reason, "failures": [reason]}


@dataclass
class EncoderRun:
    """One encoder as parity runs it. key: the result key (the manifest artifact key when the backend runs a
    manifest artifact, e.g. ``visual.fp16``; else ``<backend>:<encoder>.<precision>``, e.g. ``torch:visual.fp32``);
    run: feeds -> features float32 [N, 768], or None when it cannot run (``error`` says why); fields: what the entry
    records about it (file, sha256, provider or device, backend description)."""

    key: str
    encoder: spec.EncoderSpec
    run: Callable[[dict[str, np.ndarray]], np.ndarray] | None
    fields: dict
    error: str | None = None


def result_key(backend: str, encoder: str, precision: str) -> str:
    """``visual.fp32`` for the bundle's ONNX graphs in ONNX Runtime; ``torch:visual.fp32`` for other backends."""
    key = artifact_key(encoder, precision)
    return key if backend == BACKEND else f"{backend}:{key}"


def _onnxruntime_runs(
    bundle: Bundle, precision: str, providers: list[Provider], batch_size: int
) -> list[EncoderRun]:
    """Each graph in its own session, so that a missing or broken graph fails alone: the two encoders first, then
    any fused variant the manifest lists for them (``textual.fp32.fused``), judged on its own."""
    runs = []
    keys = [(artifact_key(e.name, precision), e) for e in (spec.VISUAL, spec.TEXTUAL)]
    keys += [
        (key, spec.ENCODERS[entry["encoder"]])
        for key, entry in bundle.artifacts.items()
        if entry.get("fused_variant_of") in {main for main, _ in keys} and entry.get("encoder") in spec.ENCODERS
    ]
    for key, encoder_spec in keys:
        fields: dict = {}
        try:
            manifest_entry = bundle.artifact(key)
            fields.update(file=manifest_entry["path"], sha256=manifest_entry.get("sha256"))
            bundle.verify([key])
            encoder = OnnxRuntimeEncoder(bundle.path(manifest_entry["path"]), providers=providers, encoder=encoder_spec)
        except (BundleError, BackendError) as exc:
            runs.append(EncoderRun(key, encoder_spec, None, fields, str(exc)))
            continue
        fields["provider"] = encoder.providers[0]
        runs.append(EncoderRun(key, encoder_spec, partial(encoder.run_batched, batch_size=batch_size), fields))
    return runs


def _batched(encode: Callable[..., np.ndarray], names: list[str], batch_size: int):
    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        total = len(feeds[names[0]])
        chunks = [encode(*(feeds[n][start : start + batch_size] for n in names)) for start in range(0, total, batch_size)]
        return np.concatenate([np.asarray(c, dtype=np.float32) for c in chunks], axis=0)

    return run


def _backend_runs(
    bundle: Bundle, backend: str, precision: str, options: dict, batch_size: int
) -> tuple[list[EncoderRun], Backend | None]:
    """Both encoders of one backend opened through ``plan_backend`` (its artifacts verified first)."""
    try:
        plan = plan_backend(bundle, backend, precision, **options)
        bundle.verify(plan.artifacts)
        opened = plan.open(bundle)
    except (BundleError, BackendError) as exc:
        return [
            EncoderRun(result_key(backend, e.name, precision), e, None, {"backend": backend}, str(exc))
            for e in (spec.VISUAL, spec.TEXTUAL)
        ], None
    runs = []
    encoders = {
        spec.VISUAL.name: (opened.encode_pixels, [t.name for t in spec.VISUAL.inputs]),
        spec.TEXTUAL.name: (opened.encode_tokens, [t.name for t in spec.TEXTUAL.inputs]),
    }
    for encoder_spec in (spec.VISUAL, spec.TEXTUAL):
        manifest_key = opened.artifact_key(encoder_spec.name)
        key = manifest_key or result_key(opened.name, encoder_spec.name, precision)
        fields = {"backend": opened.name, "backend_description": opened.describe(), "device": opened.device}
        if manifest_key in bundle.artifacts:
            entry = bundle.artifacts[manifest_key]
            fields.update(file=entry.get("path"), sha256=entry.get("sha256"))
        encode, names = encoders[encoder_spec.name]
        runs.append(EncoderRun(key, encoder_spec, _batched(encode, names, batch_size), fields))
    return runs, opened


def _check_encoder(run: EncoderRun, precision: str, probe: Probe, common: dict) -> tuple[dict, np.ndarray | None]:
    """Run one encoder on the probe and judge it. Returns its report entry and its features (None if it did not
    run)."""
    encoder_spec = run.encoder
    thresholds = thresholds_for(precision)
    entry = {
        "kind": "artifact",
        "artifact": run.key,
        "encoder": encoder_spec.name,
        "precision": precision,
        **common,
        **run.fields,
        "thresholds": thresholds.to_dict(),
    }
    if run.run is None:
        return _failed(entry, run.error or "could not be run"), None
    try:
        features = run.run({t.name: probe.inputs[t.name] for t in encoder_spec.inputs})
    except (BundleError, BackendError) as exc:
        return _failed(entry, str(exc)), None

    key = run.key
    visual = encoder_spec.name == spec.VISUAL.name
    reference_image = probe.reference[spec.VISUAL.outputs[0].name]
    reference_text = probe.reference[spec.TEXTUAL.outputs[0].name]
    reference = reference_image if visual else reference_text
    if features.shape != reference.shape:
        return _failed(
            entry, f"{key} gives features of shape {list(features.shape)}; the reference has {list(reference.shape)}"
        ), None
    # The other modality is the reference's, so this encoder alone decides its verdict.
    image, text = (features, reference_text) if visual else (reference_image, features)
    metrics = {
        **feature_metrics(features, reference),
        **similarity_metrics(image, text, reference_image, reference_text, thresholds.clear_margin),
    }
    failures = judge(metrics, thresholds)
    return {**entry, **metrics, "passed": not failures, "error": None, "failures": failures}, features


def _check_combined(
    key: str, precision: str, parts: dict[str, dict], features: dict[str, np.ndarray], probe: Probe, common: dict
) -> dict:
    """Judge the visual and textual encoders of one precision together (``parts``: their entries, visual first):
    both must pass, and so must the similarities and top-1 they give between them."""
    thresholds = thresholds_for(precision)
    visual_key, textual_key = list(parts)[:2]
    entry = {
        "kind": "combined",
        "artifact": key,
        "artifacts": [visual_key, textual_key],
        "precision": precision,
        **common,
        **{name: parts[visual_key][name] for name in ("provider", "backend", "device") if name in parts[visual_key]},
        "thresholds": thresholds.to_dict(),
    }
    if visual_key not in features or textual_key not in features:
        missing = [key for key in (visual_key, textual_key) if key not in features]
        return _failed(entry, f"not judged: {' and '.join(missing)} could not be run")
    image, text = features[visual_key], features[textual_key]
    visual, textual = parts[visual_key], parts[textual_key]

    def worst(name: str, pick) -> float:  # np.min/np.max, unlike min/max, let a NaN through whatever its position
        return float(pick([visual[name], textual[name]]))

    metrics = {
        "rows": visual["rows"] + textual["rows"],
        "min_cosine": worst("min_cosine", np.min),
        "mean_cosine": (visual["mean_cosine"] * visual["rows"] + textual["mean_cosine"] * textual["rows"])
        / (visual["rows"] + textual["rows"]),
        "max_abs_error": worst("max_abs_error", np.max),
        "max_rel_error": worst("max_rel_error", np.max),
        "max_elementwise_rel_error": worst("max_elementwise_rel_error", np.max),
        "nan": visual["nan"] + textual["nan"],
        "inf": visual["inf"] + textual["inf"],
        **similarity_metrics(
            image,
            text,
            probe.reference[spec.VISUAL.outputs[0].name],
            probe.reference[spec.TEXTUAL.outputs[0].name],
            thresholds.clear_margin,
        ),
    }
    failures = [f"{key} failed" for key in (visual_key, textual_key) if not parts[key]["passed"]]
    failures += judge(metrics, thresholds)
    return {**entry, **metrics, "passed": not failures, "error": None, "failures": failures}


def run_parity(
    bundle_root: str | Path,
    precisions: Sequence[str] = PRECISIONS,
    providers: Sequence[Provider] | None = None,
    write: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    backend: str = BACKEND,
    backend_options: dict | None = None,
    skip_unavailable: bool = False,
) -> dict:
    """Run both encoders of ``backend`` at each precision on the bundle's probe and judge them against the
    reference.

    backend: "onnxruntime" (default: each ``{visual,textual}.{precision}`` graph in its own session, on
    ``providers``), or "torch", "tensorrt", "auto" — opened through ``runtime.backends.plan_backend`` with
    ``backend_options`` (e.g. ``{"device": "cuda"}`` for torch), after the artifacts it reads are verified.
    Result keys: the manifest artifact key when the backend runs one (``visual.fp16``, a TensorRT engine's key),
    else ``<backend>:<encoder>.<precision>``; the pair's row is ``combined.<precision>`` (``<backend>:combined...``).
    skip_unavailable: a precision the backend refuses on this machine (torch fp16 on a CPU) is left out and listed
    in ``report["skipped"]`` instead of failing.

    An encoder that is missing, does not match its manifest sha256, or cannot be run is a failed entry (with the
    reason), not an exception. Raises BundleError when the directory is not a usable bundle or has no readable
    probe. With ``write``: the report (``parity/report.json``; ``parity/report.<backend>.json`` for other
    backends), its error plot, and the manifest's ``parity`` section and ``deployable`` flags (for results keyed by
    a manifest artifact), all written atomically.

    Returns the report described in the module docstring (``written`` is None unless ``write``); metric values
    stay Python floats there, NaN included.
    """
    for precision in precisions:
        thresholds_for(precision)
    if backend != BACKEND and providers is not None:
        raise BackendError(f"providers are ONNX Runtime's; the {backend} backend takes backend_options")
    bundle = Bundle.load(bundle_root)
    bundle.check_tokenizer()  # what Embedder.load checks too: a bundle it refuses must not pass here
    probe = load_probe(bundle)
    providers = parity_providers(providers) if backend == BACKEND else []
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    common = {
        "backend": backend,
        "onnxruntime_version": ort.__version__,
        "provider": provider_name(providers[0]) if providers else None,
        "date": date,
        "probe": {"images": probe.images, "texts": probe.texts},
    }

    results: dict[str, dict] = {}
    features: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    for precision in precisions:
        if backend != BACKEND and skip_unavailable:
            problem = _unavailable(bundle, backend, precision, backend_options or {})
            if problem:
                skipped[precision] = problem
                continue
        opened = None
        if backend == BACKEND:
            runs = _onnxruntime_runs(bundle, precision, providers, batch_size)
        else:
            runs, opened = _backend_runs(bundle, backend, precision, backend_options or {}, batch_size)
        try:
            parts = {}
            for run in runs:
                entry, output = _check_encoder(run, precision, probe, common)
                parts[entry["artifact"]] = results[entry["artifact"]] = entry
                if output is not None:
                    features[entry["artifact"]] = output
        finally:
            if opened is not None:
                opened.close()
        name = runs[0].fields.get("backend", backend)
        combined_key = f"combined.{precision}" if name == BACKEND else f"{name}:combined.{precision}"
        results[combined_key] = _check_combined(combined_key, precision, parts, features, probe, common)

    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "bundle": str(bundle.root),
        "date": date,
        "backend": backend,
        "onnxruntime_version": ort.__version__,
        "providers": _describe_providers(providers),
        "backend_options": _json_safe(dict(backend_options or {})),
        "precisions": [p for p in precisions if p not in skipped],
        "skipped": skipped,
        "probe": {"images": probe.images, "texts": probe.texts},
        "thresholds": {precision: thresholds_for(precision).to_dict() for precision in precisions},
        "results": results,
        "passed": bool(results) and all(entry["passed"] for entry in results.values()),
        "written": None,
    }
    if write:
        report["written"] = _write_results(bundle.root, report, features, probe)
    return report


def _unavailable(bundle: Bundle, backend: str, precision: str, options: dict) -> str | None:
    """Why ``backend`` refuses ``precision`` on this machine before opening anything, or None."""
    try:
        plan_backend(bundle, backend, precision, **options)
    except BackendError as exc:
        return str(exc)
    return None


# --- writing: report, plot, manifest -----------------------------------------------------------------------------


def _json_safe(value):
    """NaN/Inf become null (JSON has no NaN; the nan/inf counts keep the fact)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def _write_results(root: Path, report: dict, features: dict[str, np.ndarray], probe: Probe) -> dict:
    """Plot, report and manifest; returns what went where (paths relative to the bundle)."""
    try:
        return _write_files(root, report, features, probe)
    except OSError as exc:
        raise BundleError(
            f"cannot write the parity results into {root} ({exc}); to report without writing, run: "
            f"ruclip-tiny parity {root} --no-write (or run parity on a writable copy of the bundle)"
        ) from None


def report_files(backend: str) -> tuple[str, str]:
    """(report, plot) paths in a bundle: ``parity/report.json`` and ``parity/errors.png`` for the ONNX graphs in
    ONNX Runtime, ``parity/report.<backend>.json`` and ``parity/errors.<backend>.png`` for other backends."""
    if backend == BACKEND:
        return REPORT_FILE, PLOT_FILE
    return f"{PARITY_DIR}/report.{backend}.json", f"{PARITY_DIR}/errors.{backend}.png"


def _write_files(root: Path, report: dict, features: dict[str, np.ndarray], probe: Probe) -> dict:
    report_file, plot_file = report_files(report["backend"])
    for relative in (report_file, plot_file):  # a parity/ symlinked out of the bundle must not be written through
        contained_path(root, relative, f"bundle {root}")
    written = {"report": report_file, "manifest": "manifest.json", "plot": None, "plot_skipped": None}
    try:
        write_error_plot(root / plot_file, report, features, probe)
        written["plot"] = plot_file
    except ImportError:
        written["plot_skipped"] = "matplotlib is not installed (pip install 'ruclip-tiny[plots]')"
    report["written"] = written
    atomic_write_json(root / report_file, _json_safe(report))

    # Re-read the manifest just before rewriting it, so that what another command added meanwhile survives.
    bundle = Bundle.load(root)
    parity = bundle.manifest.setdefault("parity", {})
    for key, entry in report["results"].items():
        if entry["kind"] == "artifact":
            if key in bundle.artifacts:
                bundle.artifacts[key]["deployable"] = entry["passed"]
            elif key == artifact_key(entry["encoder"], entry["precision"]):
                continue  # a graph the manifest lacks: nothing to mark, the failure is in the report
        parity[key] = _json_safe(entry)
    bundle.write_manifest()
    return written


def write_error_plot(path: Path, report: dict, features: dict[str, np.ndarray], probe: Probe) -> None:
    """``parity/errors.png``: per artifact, histograms of per-element |Δ| and per-row 1 - cosine, on log axes.

    Raises ImportError when matplotlib is not installed (it is optional: ``ruclip-tiny[plots]``).
    """
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend state

    keys = [key for key in report["results"] if key in features]
    height = 2.4 * max(len(keys), 1)
    figure = Figure(figsize=(11, height))
    margins = {"left": 0.06, "right": 0.98, "top": 1 - 0.3 / height, "bottom": 0.35 / height}
    axes = figure.subplots(max(len(keys), 1), 2, squeeze=False, gridspec_kw={"hspace": 0.5, "wspace": 0.15, **margins})
    for row, key in enumerate(keys):
        entry = report["results"][key]
        thresholds = thresholds_for(entry["precision"])
        reference = probe.reference[spec.ENCODERS[entry["encoder"]].outputs[0].name]
        candidate = features[key]
        abs_bound = (
            thresholds.max_abs_error_per_norm * entry["mean_reference_norm"]
            if thresholds.max_abs_error_per_norm is not None
            else None
        )
        _log_histogram(
            axes[row, 0],
            np.abs(candidate.astype(np.float64) - reference).ravel(),
            f"{key} ({'PASS' if entry['passed'] else 'FAIL'}): |Δ| per element",
            abs_bound,
        )
        _log_histogram(
            axes[row, 1],
            1.0 - row_cosines(candidate, reference),
            f"{key}: 1 - cosine per row",
            1 - thresholds.min_cosine,
        )
    if not keys:
        axes[0, 0].text(0.5, 0.5, "no artifact could be run", ha="center", va="center")
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=90)


def _log_histogram(axis, values: np.ndarray, title: str, limit: float | None) -> None:
    """Histogram on a log x axis (zeros cannot sit on one: they are counted in the title); ``limit`` as a red line."""
    from matplotlib.ticker import NullLocator

    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    notes = []
    if len(finite) > len(positive):
        notes.append(f"{len(finite) - len(positive)} at 0")
    if len(values) > len(finite):
        notes.append(f"{len(values) - len(finite)} NaN/Inf")
    axis.set_title(title + (f" [{', '.join(notes)}]" if notes else ""), fontsize=9)
    axis.set_xscale("log")
    axis.xaxis.set_minor_locator(NullLocator())  # minor ticks over many decades cost seconds and add nothing
    if len(positive):
        low, high = positive.min(), positive.max()
        axis.hist(positive, bins=np.geomspace(low / 1.5, high * 1.5, 40))
    else:
        axis.text(0.5, 0.5, "nothing above 0", ha="center", va="center", transform=axis.transAxes)
    if limit is not None:
        axis.axvline(limit, color="red", linestyle="--", linewidth=1, label=f"bar {limit:.2g}")
        axis.legend(fontsize=8, loc="upper left")


# --- presenting ----------------------------------------------------------------------------------------------------


def _number(value, form: str) -> str:
    return "n/a" if value is None else format(value, form)


def format_table(report: dict) -> str:
    """One line per artifact and combined row, then the reasons for every failure."""
    header = ("artifact", "min cos", "max abs", "max rel", "sim Δ", "top-1 i→t", "top-1 t→i", "NaN/Inf", "result")
    rows = []
    for key, entry in report["results"].items():
        if entry.get("error"):
            rows.append((key, "—", "—", "—", "—", "—", "—", "—", "FAIL"))
            continue
        directions = (entry["top1"]["image_to_text"], entry["top1"]["text_to_image"])
        top1 = [f"{c['agree']}/{c['clear']} of {c['rows']}" for c in directions]
        rows.append(
            (
                key,
                _number(entry["min_cosine"], ".7f"),
                _number(entry["max_abs_error"], ".2e"),
                _number(entry["max_rel_error"], ".2e"),
                _number(entry["max_similarity_change"], ".2e"),
                *top1,
                f"{entry['nan']}/{entry['inf']}",
                "PASS" if entry["passed"] else "FAIL",
            )
        )
    widths = [max(len(str(line[i])) for line in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *rows]
    ]
    lines.append(
        "top-1: agreeing/clear-margin rows of all rows (a row is clear when the reference top-1 leads top-2 "
        f"by more than {CLEAR_MARGIN:g}); sim Δ: largest change of an image–text cosine similarity"
    )
    for key, entry in report["results"].items():
        for reason in entry["failures"]:
            reason = reason.removeprefix(f"{key}: ")  # bundle errors already start with the key
            lines.append(f"FAIL {key}: {reason}")
    return "\n".join(lines)


def parity_command(
    bundle: str,
    precision: str = "all",
    providers: Sequence[Provider] | str | None = None,
    backend: str = BACKEND,
    device: str | None = None,
    write: bool = True,
) -> int:
    """``ruclip-tiny parity BUNDLE [--precision fp32|fp16|all] [--backend B] [--providers P] [--device D]
    [--no-write]``: 0 all passed, 1 something failed, 2 not a bundle or nothing could be compared.

    write: record the report, plot, verdicts and deployable flags in the bundle; False (``--no-write``) only
    prints, so a read-only bundle can be checked.

    With ``all``, a precision that the backend refuses on this machine (torch fp16 on a CPU) is skipped with the
    reason printed; asked for by name, it is a failure.
    """
    if precision != "all" and precision not in THRESHOLDS:
        print(f"ruclip-tiny parity: error: --precision must be fp32, fp16 or all, not {precision!r}", file=sys.stderr)
        return 2
    precisions = PRECISIONS if precision == "all" else (precision,)
    if isinstance(providers, str):
        providers = [name.strip() for name in providers.split(",") if name.strip()]
    if backend != BACKEND and providers:
        print(f"ruclip-tiny parity: error: --providers is for --backend onnxruntime, not {backend}", file=sys.stderr)
        return 2
    if device is not None and backend != "torch":
        print("ruclip-tiny parity: error: --device is for --backend torch (cpu, cuda, cuda:N)", file=sys.stderr)
        return 2
    options = {"device": device} if device is not None else {}
    try:
        report = run_parity(
            bundle,
            precisions,
            providers=providers or None,
            backend=backend,
            backend_options=options,
            skip_unavailable=precision == "all",
            write=write,
        )
    except (BundleError, BackendError) as exc:
        print(f"ruclip-tiny parity: error: {exc}", file=sys.stderr)
        return 2

    for skipped, reason in report["skipped"].items():
        print(f"skipped {skipped}: {reason}")
    if not report["results"]:
        print(f"ruclip-tiny parity: error: the {backend} backend could run no precision here", file=sys.stderr)
        return 2
    where = sorted(
        {entry.get("provider") or entry.get("backend_description") or entry.get("backend")
         for entry in report["results"].values()} - {None}
    )
    engine = f"onnxruntime {report['onnxruntime_version']}" if backend == BACKEND else f"the {backend} backend"
    print(
        f"parity of {report['bundle']} against its probe reference ({report['probe']['images']} images, "
        f"{report['probe']['texts']} texts), {engine} on {', '.join(where) or 'nothing'}"
    )
    print(format_table(report))
    root = Path(report["bundle"])
    written = report["written"]
    if written is None:
        print(f"nothing written (--no-write): {root} is unchanged, no deployable flag was set")
    else:
        print(f"report:   {root / written['report']}")
        if written["plot"]:
            print(f"plot:     {root / written['plot']}")
        else:
            print(f"plot:     skipped — {written['plot_skipped']}")
        print(f"manifest: parity results and deployable flags updated in {root / written['manifest']}")
    failed = [key for key, entry in report["results"].items() if not entry["passed"]]
    if failed:
        marking = "a failed artifact is marked not deployable" if written else "nothing was marked (--no-write)"
        print(f"PARITY FAILED: {', '.join(failed)} (reasons above); {marking}", file=sys.stderr)
        return 1
    marked = [key for key, entry in report["results"].items() if entry["kind"] == "artifact" and ":" not in key]
    if written is None:
        print("parity passed")
    elif marked:
        print("parity passed: every requested artifact is marked deployable")
    else:
        print(f"parity passed (the {backend} backend runs no artifact of the manifest, so no deployable flag changed)")
    return 0
