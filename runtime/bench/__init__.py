"""``ruclip-tiny bench``'s library: latency and throughput of the runtime's backends against the original pipeline,
all timed by one loop (``timing.measure_alternating``; the torch baseline is imported only when it runs).

``settings`` (workloads, defaults, checks), ``timing`` (the loop), ``environment`` (the machine), ``inputs`` (what
is fed), ``baseline`` (the original pipeline, torch), ``run`` (``run_bench``), ``report`` (JSON, plot, table).
"""

from .environment import cpu_model, load_average, versions
from .inputs import BenchInputs, fill, load_inputs
from .report import BENCH_JSON, BENCH_PLOT, combine_rounds, format_table, plot_latency, write_report
from .run import BASELINE_NAME, BENCH_SCHEMA_VERSION, check_backends_can_run, run_bench
from .settings import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_END_TO_END_IMAGES,
    DEFAULT_REPEATS,
    DEFAULT_TIME_BUDGET_S,
    DEFAULT_WARMUP,
    QUICK_BATCH_SIZES,
    QUICK_END_TO_END_IMAGES,
    QUICK_REPEATS,
    QUICK_TIME_BUDGET_S,
    QUICK_WARMUP,
    WORKLOADS,
    BenchError,
    parse_batch_sizes,
    parse_names,
)
from .timing import MIN_REPEATS, Timer, Timing, measure_alternating, wall_timer

__all__ = [
    "BASELINE_NAME", "BENCH_JSON", "BENCH_PLOT", "BENCH_SCHEMA_VERSION", "DEFAULT_BATCH_SIZES",
    "DEFAULT_END_TO_END_IMAGES", "DEFAULT_REPEATS", "DEFAULT_TIME_BUDGET_S", "DEFAULT_WARMUP", "MIN_REPEATS",
    "QUICK_BATCH_SIZES", "QUICK_END_TO_END_IMAGES", "QUICK_REPEATS", "QUICK_TIME_BUDGET_S", "QUICK_WARMUP",
    "WORKLOADS", "BenchError", "BenchInputs", "Timer", "Timing", "check_backends_can_run", "combine_rounds",
    "cpu_model", "fill", "format_table", "load_average", "load_inputs", "measure_alternating", "parse_batch_sizes",
    "parse_names", "plot_latency", "run_bench", "versions", "wall_timer", "write_report",
]
