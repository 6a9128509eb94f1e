"""The bench's report: ``bench.json`` and ``bench.png``, the text table, and the median over several rounds."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .settings import WORKLOADS

logger = logging.getLogger("runtime.bench")

BENCH_JSON = "bench.json"
BENCH_PLOT = "bench.png"


def write_report(report: dict, out_dir: str | os.PathLike) -> dict:
    """``bench.json`` and ``bench.png`` (when matplotlib is installed) in ``out_dir``; sets ``report["files"]``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["files"] = {"json": str(out / BENCH_JSON)}
    plot = plot_latency(report, out / BENCH_PLOT)
    if plot is not None:
        report["files"]["plot"] = str(plot)
    (out / BENCH_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def _row_key(row: dict) -> tuple:
    # end-to-end rows have no workload but a number of images
    return tuple(row.get(name) for name in ("workload", "images", "pipeline", "backend", "precision", "batch_size"))


def combine_rounds(reports: Sequence[dict]) -> dict:
    """One report from several complete runs of the same configuration: every figure is the median over the rounds
    (a ratio is the median of each round's own ratio, so a round's baseline and runtime stay paired), with
    ``rounds`` and the ratio range kept beside it. On a shared machine the load drifts between configurations of
    one run; the median over rounds is what is left when that drift is not systematic."""
    if len(reports) == 1:
        return reports[0]
    combined = json.loads(json.dumps(reports[0]))
    for section in ("rows", "end_to_end"):
        by_key: dict[tuple, list[dict]] = {}
        for report in reports:
            for row in report[section]:
                by_key.setdefault(_row_key(row), []).append(row)
        for row in combined[section]:
            rounds = by_key[_row_key(row)]
            for name in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_per_s", "images_per_s",
                         "baseline_p50_ms", "unfused_p50_ms", "fused_speedup"):
                values = [r[name] for r in rounds if r.get(name) is not None]
                if values:
                    row[name] = float(np.median(values))
            ratios = [r["ratio_vs_baseline"] for r in rounds if r.get("ratio_vs_baseline") is not None]
            if ratios:
                row["ratio_vs_baseline"] = float(np.median(ratios))
                row["ratio_range"] = [float(min(ratios)), float(max(ratios))]
            row["rounds"] = len(rounds)
    combined["rounds"] = len(reports)
    combined["elapsed_s"] = round(sum(r["elapsed_s"] for r in reports), 1)
    combined["machine"]["load_average_1m_end"] = reports[-1]["machine"]["load_average_1m_end"]
    return combined


def pipeline_label(row: dict) -> str:
    """How a row's pipeline is named in the table and the plot."""
    if row["pipeline"] == "baseline":
        return "baseline torch eager fp32"
    return f"{row['backend']} {row['precision']}"


def plot_latency(report: dict, path: str | os.PathLike) -> Path | None:
    """PNG: p50 latency (ms per batch) against batch size, one panel per workload, one line per pipeline, log
    axes; None when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        logger.info("matplotlib is not installed: no plot")
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(WORKLOADS), figsize=(5 * len(WORKLOADS), 4.2), squeeze=False)
    for ax, workload in zip(axes[0], WORKLOADS):
        rows = [r for r in report["rows"] if r["workload"] == workload]
        for label in dict.fromkeys(pipeline_label(r) for r in rows):
            series = sorted((r for r in rows if pipeline_label(r) == label), key=lambda r: r["batch_size"])
            x = [r["batch_size"] for r in series]
            ax.plot(x, [r["p50_ms"] for r in series], "--o" if label.startswith("baseline") else "-o", label=label)
            ax.fill_between(x, [r["p50_ms"] for r in series], [r["p90_ms"] for r in series], alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        sizes = sorted({r["batch_size"] for r in rows})
        if sizes:
            ax.set_xticks(sizes, [str(size) for size in sizes])
            ax.minorticks_off() if len(sizes) > 1 else None
        ax.set_xlabel("batch size")
        ax.set_ylabel("p50 latency, ms per batch (band: to p90)")
        ax.set_title(workload)
        ax.grid(True, which="both", alpha=0.3)
        if rows:
            ax.legend(fontsize=8)
    machine = report["machine"]
    fig.suptitle(f"ruclip-tiny bench: {machine['cpu_model']}, {machine['threads']} threads, {report['date'][:10]}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(report: dict) -> str:
    """The rows as a text table with ratios against the baseline."""
    lines = [
        f"{'workload':<14} {'pipeline':<26} {'batch':>5} {'tokens':>6} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
        f"{'items/s':>9} {'x baseline':>10} {'fused x':>8}"
    ]
    for workload in WORKLOADS:
        for row in sorted((r for r in report["rows"] if r["workload"] == workload),
                          key=lambda r: (r["pipeline"] != "baseline", pipeline_label(r), r["batch_size"])):
            ratio = row.get("ratio_vs_baseline")
            lines.append(
                f"{workload:<14} {pipeline_label(row):<26} {row['batch_size']:>5} {row.get('tokens_fed', ''):>6} "
                f"{row['p50_ms']:>9.2f} {row['p90_ms']:>9.2f} {row['p99_ms']:>9.2f} {row['throughput_per_s']:>9.1f} "
                f"{'no baseline' if ratio is None else f'{ratio:.2f}x':>10}"
                + (f" {row['fused_speedup']:>7.2f}x" if "fused_speedup" in row else "")
            )
    for row in report["end_to_end"]:
        ratio = row.get("ratio_vs_baseline")
        shown = "no baseline" if ratio is None else f"{ratio:.2f}x"
        lines.append(
            f"{'e2e ' + str(row['images']) + ' JPEGs':<14} {pipeline_label(row):<26} {row['batch_size']:>5} {'':>6} "
            f"{row['p50_ms']:>9.1f} {'':>9} {'':>9} {row['images_per_s']:>9.1f} {shown:>10}"
        )
    return "\n".join(lines)
