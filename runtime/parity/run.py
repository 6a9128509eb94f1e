"""One parity run: each encoder of a backend at each precision on the bundle's probe, judged against the reference.

Every artifact is judged on its own: a visual graph by its image features against the reference and by the
image–text similarities it gives with the REFERENCE text features (a textual graph symmetrically), so a bad
textual graph never gets the visual one marked not deployable. A ``combined.<precision>`` row then judges the
two graphs of a precision together, as a deployment uses them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ruclip_tiny import spec
from runtime.backends import Backend, BackendError, plan_backend
from runtime.backends.onnxruntime import OnnxRuntimeEncoder, Provider, provider_name, resolve_providers
from runtime.bundle import PRECISIONS, Bundle, BundleError, artifact_key
from runtime.parity.metrics import feature_metrics, judge, similarity_metrics
from runtime.parity.probe import Probe, load_probe
from runtime.parity.report import BACKEND, REPORT_SCHEMA_VERSION, _write_results, json_safe
from runtime.parity.thresholds import thresholds_for

DEFAULT_BATCH_SIZE = 16



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
        chunks = [
            encode(*(feeds[n][start : start + batch_size] for n in names)) for start in range(0, total, batch_size)
        ]
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
        "backend_options": json_safe(dict(backend_options or {})),
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
