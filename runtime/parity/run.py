"""One parity run: each encoder of a backend at each precision on the bundle's probe, judged against the reference.

Every artifact is judged on its own: a visual graph by its image features against the reference and by the
image–text similarities it gives with the REFERENCE text features (a textual graph symmetrically), so a bad
textual graph never gets the visual one marked not deployable. A ``combined.<precision>`` row then judges the
two graphs of a precision together, as a deployment uses them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
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
from runtime.parity.report import BACKEND, write_results
from runtime.parity.results import EntryMetrics, ParityEntry, ParityReport, ProbeSize, json_safe
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


@dataclass
class EncoderRun:
    """One encoder as parity runs it. key: the result key (the manifest artifact key when the backend runs a
    manifest artifact, e.g. ``visual.fp16``; else ``<backend>:<encoder>.<precision>``, e.g. ``torch:visual.fp32``);
    run: feeds -> features float32 [N, 768], or None when it cannot run (``error`` says why); the rest is what its
    entry records about it."""

    key: str
    encoder: spec.EncoderSpec
    run: Callable[[dict[str, np.ndarray]], np.ndarray] | None
    backend: str
    error: str | None = None
    file: str | None = None
    sha256: str | None = None
    provider: str | None = None
    device: str | None = None
    backend_description: str | None = None


@dataclass(frozen=True)
class _Context:
    """What every entry of one run shares."""

    onnxruntime_version: str
    date: str
    probe: ProbeSize


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
        (key, spec.ENCODERS[entry.encoder])
        for key, entry in bundle.artifacts.items()
        if entry.fused_variant_of in {main for main, _ in keys} and entry.encoder in spec.ENCODERS
    ]
    for key, encoder_spec in keys:
        run = EncoderRun(key, encoder_spec, None, BACKEND, provider=provider_name(providers[0]))  # until it opens
        try:
            manifest_entry = bundle.artifact(key)
            run.file, run.sha256 = manifest_entry.path, manifest_entry.sha256
            bundle.verify([key])
            encoder = OnnxRuntimeEncoder(bundle.path(manifest_entry.path), providers=providers, encoder=encoder_spec)
        except (BundleError, BackendError) as exc:
            run.error = str(exc)
            runs.append(run)
            continue
        run.provider = encoder.providers[0]
        run.run = partial(encoder.run_batched, batch_size=batch_size)
        runs.append(run)
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
            EncoderRun(result_key(backend, e.name, precision), e, None, backend, error=str(exc))
            for e in (spec.VISUAL, spec.TEXTUAL)
        ], None
    return _opened_runs(bundle, opened, precision, batch_size), opened


def _opened_runs(bundle: Bundle, opened: Backend, precision: str, batch_size: int) -> list[EncoderRun]:
    """The two encoders of a backend already open, as parity runs them."""
    runs = []
    encoders = {
        spec.VISUAL.name: (opened.encode_pixels, [t.name for t in spec.VISUAL.inputs]),
        spec.TEXTUAL.name: (opened.encode_tokens, [t.name for t in spec.TEXTUAL.inputs]),
    }
    for encoder_spec in (spec.VISUAL, spec.TEXTUAL):
        manifest_key = opened.artifact_key(encoder_spec.name)
        key = manifest_key or result_key(opened.name, encoder_spec.name, precision)
        encode, names = encoders[encoder_spec.name]
        run = EncoderRun(key, encoder_spec, _batched(encode, names, batch_size), opened.name,
                         device=opened.device, backend_description=opened.describe())
        if manifest_key in bundle.artifacts:
            entry = bundle.artifacts[manifest_key]
            run.file, run.sha256 = entry.path, entry.sha256
        runs.append(run)
    return runs


def _encoder_runs(
    bundle: Bundle, backend: str, precision: str, providers: list[Provider], options: dict, batch_size: int
) -> tuple[list[EncoderRun], Backend | None]:
    """The encoders of ``backend`` at ``precision``, ready to run on the probe, and what to close afterwards."""
    if backend == BACKEND:
        return _onnxruntime_runs(bundle, precision, providers, batch_size), None
    return _backend_runs(bundle, backend, precision, options, batch_size)


def _failed(entry: ParityEntry, reason: str) -> ParityEntry:
    return replace(entry, passed=False, error=reason, failures=[reason])


def _judged(entry: ParityEntry, metrics: dict, failures: list[str]) -> ParityEntry:
    return replace(entry, metrics=EntryMetrics.from_metrics(metrics), passed=not failures, failures=failures)


def _check_encoder(
    run: EncoderRun, precision: str, probe: Probe, context: _Context
) -> tuple[ParityEntry, np.ndarray | None]:
    """Run one encoder on the probe and judge it. Returns its entry and its features (None if it did not run)."""
    encoder_spec = run.encoder
    thresholds = thresholds_for(precision)
    entry = ParityEntry(
        kind="artifact", artifact=run.key, encoder=encoder_spec.name, precision=precision, backend=run.backend,
        onnxruntime_version=context.onnxruntime_version, provider=run.provider, date=context.date,
        probe=context.probe, thresholds=thresholds, file=run.file, sha256=run.sha256, device=run.device,
        backend_description=run.backend_description, passed=False, failures=[],
    )
    if run.run is None:
        return _failed(entry, run.error or "could not be run"), None
    try:
        features = run.run({t.name: probe.inputs[t.name] for t in encoder_spec.inputs})
    except (BundleError, BackendError) as exc:
        return _failed(entry, str(exc)), None

    visual = encoder_spec.name == spec.VISUAL.name
    reference_image = probe.reference[spec.VISUAL.outputs[0].name]
    reference_text = probe.reference[spec.TEXTUAL.outputs[0].name]
    reference = reference_image if visual else reference_text
    if features.shape != reference.shape:
        shapes = f"{list(features.shape)}; the reference has {list(reference.shape)}"
        return _failed(entry, f"{run.key} gives features of shape {shapes}"), None
    # The other modality is the reference's, so this encoder alone decides its verdict.
    image, text = (features, reference_text) if visual else (reference_image, features)
    metrics = {
        **feature_metrics(features, reference),
        **similarity_metrics(image, text, reference_image, reference_text, thresholds.clear_margin),
    }
    return _judged(entry, metrics, judge(metrics, thresholds)), features


def _check_combined(
    key: str, precision: str, visual: ParityEntry, textual: ParityEntry, features: dict[str, np.ndarray],
    probe: Probe, context: _Context,
) -> ParityEntry:
    """Judge the visual and textual encoders of one precision together: both must pass, and so must the
    similarities and top-1 they give between them."""
    thresholds = thresholds_for(precision)
    entry = ParityEntry(
        kind="combined", artifact=key, artifacts=[visual.artifact, textual.artifact], precision=precision,
        backend=visual.backend, onnxruntime_version=context.onnxruntime_version, provider=visual.provider,
        device=visual.device, date=context.date, probe=context.probe, thresholds=thresholds, passed=False,
        failures=[],
    )
    if visual.metrics is None or textual.metrics is None:
        missing = [part.artifact for part in (visual, textual) if part.metrics is None]
        return _failed(entry, f"not judged: {' and '.join(missing)} could not be run")
    seen, read = visual.metrics, textual.metrics

    def worst(name: str, pick) -> float:  # np.min/np.max, unlike min/max, let a NaN through whatever its position
        return float(pick([getattr(seen, name), getattr(read, name)]))

    metrics = {
        "rows": seen.rows + read.rows,
        "min_cosine": worst("min_cosine", np.min),
        "mean_cosine": (seen.mean_cosine * seen.rows + read.mean_cosine * read.rows) / (seen.rows + read.rows),
        "max_abs_error": worst("max_abs_error", np.max),
        "max_rel_error": worst("max_rel_error", np.max),
        "max_elementwise_rel_error": worst("max_elementwise_rel_error", np.max),
        "nan": seen.nan + read.nan,
        "inf": seen.inf + read.inf,
        **similarity_metrics(
            features[visual.artifact],
            features[textual.artifact],
            probe.reference[spec.VISUAL.outputs[0].name],
            probe.reference[spec.TEXTUAL.outputs[0].name],
            thresholds.clear_margin,
        ),
    }
    failures = [f"{part.artifact} failed" for part in (visual, textual) if not part.passed]
    return _judged(entry, metrics, failures + judge(metrics, thresholds))


def _check_runs(
    runs: list[EncoderRun], precision: str, probe: Probe, context: _Context, features: dict[str, np.ndarray]
) -> dict[str, ParityEntry]:
    """Each encoder run judged on its own (the two encoders first, then any fused variant), then the pair's
    ``combined`` row; the features of those that ran are added to ``features``."""
    results: dict[str, ParityEntry] = {}
    parts = []
    for run in runs:
        entry, output = _check_encoder(run, precision, probe, context)
        parts.append(entry)
        results[entry.artifact] = entry
        if output is not None:
            features[entry.artifact] = output
    visual, textual = parts[:2]
    name = visual.backend
    combined_key = f"combined.{precision}" if name == BACKEND else f"{name}:combined.{precision}"
    results[combined_key] = _check_combined(combined_key, precision, visual, textual, features, probe, context)
    return results


def check_open_backend(
    bundle: Bundle, opened: Backend, probe: Probe, batch_size: int = DEFAULT_BATCH_SIZE
) -> dict[str, ParityEntry]:
    """Judge a backend that is already open (a serving process's own) on ``probe``, with the bars for its
    precision: its two encoders and their ``combined`` row, keyed as ``run_parity`` keys them — the same run path,
    nothing written. Raises ParityError for a precision without bars."""
    thresholds_for(opened.precision)
    context = _Context(ort.__version__, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       ProbeSize(probe.images, probe.texts))
    return _check_runs(_opened_runs(bundle, opened, opened.precision, batch_size), opened.precision, probe, context, {})


def run_parity(
    bundle_root: str | Path,
    precisions: Sequence[str] = PRECISIONS,
    providers: Sequence[Provider] | None = None,
    write: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    backend: str = BACKEND,
    backend_options: dict | None = None,
    skip_unavailable: bool = False,
) -> ParityReport:
    """Run both encoders of ``backend`` at each precision on the bundle's probe and judge them against the
    reference.

    backend: "onnxruntime" (default: each ``{visual,textual}.{precision}`` graph in its own session, on
    ``providers``), or "torch", "tensorrt", "auto" — opened through ``runtime.backends.plan_backend`` with
    ``backend_options`` (e.g. ``{"device": "cuda"}`` for torch), after the artifacts it reads are verified.
    Result keys: the manifest artifact key when the backend runs one (``visual.fp16``, a TensorRT engine's key),
    else ``<backend>:<encoder>.<precision>``; the pair's row is ``combined.<precision>`` (``<backend>:combined...``).
    skip_unavailable: a precision the backend refuses on this machine (torch fp16 on a CPU) is left out and listed
    in ``report.skipped`` instead of failing.

    An encoder that is missing, does not match its manifest sha256, or cannot be run is a failed entry (with the
    reason), not an exception. Raises ParityError for an unknown precision, BackendError for providers given to
    another backend, BundleError when the directory is not a usable bundle or has no readable probe, or when the
    results cannot be written. With ``write``: the report (``parity/report.json``; ``parity/report.<backend>.json``
    for other backends), its error plot, and the manifest's ``parity`` section and ``deployable`` flags (for results
    keyed by a manifest artifact), all written atomically.

    Returns the typed report (``written`` is None unless ``write``); metric values may be NaN there.
    """
    for precision in precisions:
        thresholds_for(precision)
    if backend != BACKEND and providers is not None:
        raise BackendError(f"providers are ONNX Runtime's; the {backend} backend takes backend_options")
    bundle = Bundle.load(bundle_root)
    bundle.check_tokenizer()  # what Embedder.load checks too: a bundle it refuses must not pass here
    probe = load_probe(bundle)
    providers = parity_providers(providers) if backend == BACKEND else []
    context = _Context(ort.__version__, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       ProbeSize(probe.images, probe.texts))

    results: dict[str, ParityEntry] = {}
    features: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    for precision in precisions:
        if backend != BACKEND and skip_unavailable:
            problem = _unavailable(bundle, backend, precision, backend_options or {})
            if problem:
                skipped[precision] = problem
                continue
        runs, opened = _encoder_runs(bundle, backend, precision, providers, backend_options or {}, batch_size)
        try:
            results.update(_check_runs(runs, precision, probe, context, features))
        finally:
            if opened is not None:
                opened.close()

    report = ParityReport(
        bundle=str(bundle.root),
        date=context.date,
        backend=backend,
        onnxruntime_version=context.onnxruntime_version,
        providers=_describe_providers(providers),
        backend_options=json_safe(dict(backend_options or {})),
        precisions=[p for p in precisions if p not in skipped],
        skipped=skipped,
        probe=context.probe,
        thresholds={precision: thresholds_for(precision) for precision in precisions},
        results=results,
    )
    if write:
        report.written = write_results(bundle.root, report, features, probe)
    return report


def _unavailable(bundle: Bundle, backend: str, precision: str, options: dict) -> str | None:
    """Why ``backend`` refuses ``precision`` on this machine before opening anything, or None."""
    try:
        plan_backend(bundle, backend, precision, **options)
    except BackendError as exc:
        return str(exc)
    return None
