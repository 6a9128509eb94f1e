"""A parity run's report: where it is written (report, plot, manifest verdicts) and how it reads as a table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ruclip_tiny.fileio import atomic_write_json
from runtime.bundle import PARITY_DIR, Bundle, BundleError, artifact_key, contained_path
from runtime.parity.plot import write_error_plot
from runtime.parity.probe import Probe
from runtime.parity.thresholds import CLEAR_MARGIN

REPORT_FILE = f"{PARITY_DIR}/report.json"
PLOT_FILE = f"{PARITY_DIR}/errors.png"
REPORT_SCHEMA_VERSION = 1
BACKEND = "onnxruntime"

def json_safe(value):
    """NaN/Inf become null (JSON has no NaN; the nan/inf counts keep the fact)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
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
    atomic_write_json(root / report_file, json_safe(report))

    # Re-read the manifest just before rewriting it, so that what another command added meanwhile survives.
    bundle = Bundle.load(root)
    parity = bundle.manifest.setdefault("parity", {})
    for key, entry in report["results"].items():
        if entry["kind"] == "artifact":
            if key in bundle.artifacts:
                bundle.artifacts[key]["deployable"] = entry["passed"]
            elif key == artifact_key(entry["encoder"], entry["precision"]):
                continue  # a graph the manifest lacks: nothing to mark, the failure is in the report
        parity[key] = json_safe(entry)
    bundle.write_manifest()
    return written



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
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *rows]
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
