"""Parity of a bundle's artifacts against the reference outputs stored in its probe: any backend, torch-free.

``ruclip-tiny parity BUNDLE`` runs on a GPU box with numpy and onnxruntime only (matplotlib, when installed, draws
``parity/errors.png``). It writes ``parity/report.json`` and records each artifact's result in the manifest,
marking it deployable only when it passed. Another backend (``torch``, ``tensorrt``, ``auto``) runs the same probe
(``parity/report.<backend>.json``): a backend that runs manifest artifacts (TensorRT engines) gets those marked; the
torch backend's rows (``torch:visual.fp32``) are recorded only.

Modules: ``thresholds`` (the bars, per precision, and the Polygraphy tolerances derived from them), ``metrics``
(numpy in, numbers out, and the verdict), ``probe`` (the bundle's probe set, read and checked), ``run`` (one run
path for every backend), ``results`` (the typed report and its entries, with their JSON), ``report`` (where a
report is written, and the table) and ``plot`` (the error plot).
"""

from runtime.parity.metrics import (
    cosine_similarities,
    feature_metrics,
    judge,
    max_abs_error,
    max_elementwise_relative_error,
    max_relative_error,
    max_similarity_change,
    nonfinite_counts,
    row_cosines,
    similarity_metrics,
    top1_agreement,
    top1_rows,
)
from runtime.parity.plot import write_error_plot
from runtime.parity.probe import Probe, load_probe
from runtime.parity.report import BACKEND, PLOT_FILE, REPORT_FILE, format_table, report_files
from runtime.parity.results import (
    REPORT_SCHEMA_VERSION,
    EntryMetrics,
    ParityEntry,
    ParityReport,
    ProbeSize,
    Top1,
    Written,
    json_safe,
)
from runtime.parity.run import DEFAULT_BATCH_SIZE, check_open_backend, parity_providers, result_key, run_parity
from runtime.parity.thresholds import (
    CLEAR_MARGIN,
    ELEMENTWISE_REL_FLOOR,
    THRESHOLDS,
    ParityError,
    Thresholds,
    polygraphy_command,
    thresholds_for,
)

__all__ = [
    "BACKEND",
    "CLEAR_MARGIN",
    "DEFAULT_BATCH_SIZE",
    "ELEMENTWISE_REL_FLOOR",
    "PLOT_FILE",
    "REPORT_SCHEMA_VERSION",
    "REPORT_FILE",
    "THRESHOLDS",
    "EntryMetrics",
    "ParityEntry",
    "ParityError",
    "ParityReport",
    "Probe",
    "ProbeSize",
    "Thresholds",
    "Top1",
    "Written",
    "check_open_backend",
    "cosine_similarities",
    "feature_metrics",
    "format_table",
    "json_safe",
    "judge",
    "load_probe",
    "max_abs_error",
    "max_elementwise_relative_error",
    "max_relative_error",
    "max_similarity_change",
    "nonfinite_counts",
    "parity_providers",
    "polygraphy_command",
    "report_files",
    "result_key",
    "row_cosines",
    "run_parity",
    "similarity_metrics",
    "thresholds_for",
    "top1_agreement",
    "top1_rows",
    "write_error_plot",
]
