"""A parity run's report: where it is written (report, plot, manifest verdicts) and how it reads as a table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ruclip_tiny.fileio import atomic_write_json
from runtime.bundle import MANIFEST, PARITY_DIR, Bundle, BundleError, artifact_key, contained_path
from runtime.manifest import ParityRecord
from runtime.parity.plot import write_error_plot
from runtime.parity.probe import Probe
from runtime.parity.results import DIRECTIONS, ParityReport, Written
from runtime.parity.thresholds import CLEAR_MARGIN

REPORT_FILE = f"{PARITY_DIR}/report.json"
PLOT_FILE = f"{PARITY_DIR}/errors.png"
BACKEND = "onnxruntime"


def write_results(root: Path, report: ParityReport, features: dict[str, np.ndarray], probe: Probe) -> Written:
    """Plot, report and manifest (each artifact's entry in ``parity`` and its ``deployable`` flag); returns what
    went where (paths relative to the bundle). Raises BundleError, naming ``--no-write``, when the bundle cannot be
    written."""
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


def _write_files(root: Path, report: ParityReport, features: dict[str, np.ndarray], probe: Probe) -> Written:
    report_file, plot_file = report_files(report.backend)
    for relative in (report_file, plot_file):  # a parity/ symlinked out of the bundle must not be written through
        contained_path(root, relative, f"bundle {root}")
    try:
        write_error_plot(root / plot_file, report, features, probe)
        written = Written(report_file, MANIFEST, plot_file)
    except ImportError:
        written = Written(
            report_file, MANIFEST, None,
            "matplotlib is not installed (pip install '.[plots]' in a checkout of ruclip-tiny)",
        )
    report.written = written
    atomic_write_json(root / report_file, report.to_json())

    # Re-read the manifest just before rewriting it, so that what another command added meanwhile survives.
    bundle = Bundle.load(root)
    for key, entry in report.results.items():
        if entry.kind == "artifact":
            if key in bundle.artifacts:
                bundle.artifacts[key].deployable = entry.passed
            elif key == artifact_key(entry.encoder, entry.precision):
                continue  # a graph the manifest lacks: nothing to mark, the failure is in the report
        bundle.manifest.parity[key] = ParityRecord.from_result(entry.to_json())
    bundle.write_manifest()
    return written


def format_table(report: ParityReport) -> str:
    """One line per artifact and combined row, then the reasons for every failure (a NaN measurement reads
    ``nan``; the NaN/Inf column counts the values behind it)."""
    header = ("artifact", "min cos", "max abs", "max rel", "sim Δ", "top-1 i→t", "top-1 t→i", "NaN/Inf", "result")
    rows = []
    for key, entry in report.results.items():
        metrics = entry.metrics
        if entry.error or metrics is None:
            rows.append((key, "—", "—", "—", "—", "—", "—", "—", "FAIL"))
            continue
        top1 = [f"{c.agree}/{c.clear} of {c.rows}" for c in (metrics.top1[d] for d in DIRECTIONS)]
        rows.append(
            (
                key,
                format(metrics.min_cosine, ".7f"),
                format(metrics.max_abs_error, ".2e"),
                format(metrics.max_rel_error, ".2e"),
                format(metrics.max_similarity_change, ".2e"),
                *top1,
                f"{metrics.nan}/{metrics.inf}",
                "PASS" if entry.passed else "FAIL",
            )
        )
    widths = [max(len(str(line[i])) for line in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *rows]
    ]
    lines.append(
        "top-1: agreeing/clear-margin rows of all rows (a row is clear when the reference top-1 leads top-2 "
        f"by more than {CLEAR_MARGIN:g}); sim Δ: largest change of an image–text cosine similarity"
    )
    for key, entry in report.results.items():
        for reason in entry.failures:
            reason = reason.removeprefix(f"{key}: ")  # bundle errors already start with the key
            lines.append(f"FAIL {key}: {reason}")
    return "\n".join(lines)
