"""``parity/errors.png``: how far each artifact's features are from the reference, drawn with matplotlib (optional)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ruclip_tiny import spec
from ruclip_tiny.fileio import atomic_path
from runtime.parity.metrics import row_cosines
from runtime.parity.probe import Probe
from runtime.parity.results import ParityReport


def write_error_plot(path: Path, report: ParityReport, features: dict[str, np.ndarray], probe: Probe) -> None:
    """``parity/errors.png``: per artifact, histograms of per-element |Δ| and per-row 1 - cosine, on log axes.

    Raises ImportError when matplotlib is not installed (it is optional: ``ruclip-tiny[plots]``).
    """
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend state

    keys = [key for key in report.results if key in features]
    height = 2.4 * max(len(keys), 1)
    figure = Figure(figsize=(11, height))
    margins = {"left": 0.06, "right": 0.98, "top": 1 - 0.3 / height, "bottom": 0.35 / height}
    axes = figure.subplots(max(len(keys), 1), 2, squeeze=False, gridspec_kw={"hspace": 0.5, "wspace": 0.15, **margins})
    for row, key in enumerate(keys):
        entry = report.results[key]
        thresholds = entry.thresholds
        reference = probe.reference[spec.ENCODERS[entry.encoder].outputs[0].name]
        candidate = features[key]
        abs_bound = (
            thresholds.max_abs_error_per_norm * entry.metrics.mean_reference_norm
            if thresholds.max_abs_error_per_norm is not None
            else None
        )
        _log_histogram(
            axes[row, 0],
            np.abs(candidate.astype(np.float64) - reference).ravel(),
            f"{key} ({'PASS' if entry.passed else 'FAIL'}): |Δ| per element",
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

