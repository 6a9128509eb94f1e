"""``ruclip-tiny bench``: latency and throughput of the runtime against the torch baseline."""

from __future__ import annotations

import argparse
import sys

from .options import positive_int


def register(commands) -> None:
    parser = commands.add_parser(
        "bench", help="latency and throughput of the runtime against the original torch eager fp32 pipeline"
    )
    parser.add_argument("bundle", help="bundle directory (nothing is written into it)")
    parser.add_argument("--backends", default="onnxruntime", help="comma-separated: onnxruntime,torch,tensorrt")
    parser.add_argument("--precisions", default="fp32", help="comma-separated: fp32,fp16")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated batch sizes (default 1,8,32; quick: 1,8)")
    parser.add_argument(
        "--text-batch-sizes", default=None, help="batch sizes of the text workloads (default: --batch-sizes)"
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None,
        help="torch threads = ONNX Runtime intra-op threads (default: all cores)"
    )
    parser.add_argument("--out", default=None, help="directory for bench.json and bench.png")
    parser.add_argument("--quick", action="store_true", help="few repeats, batch sizes 1 and 8, 4 JPEGs end to end")
    parser.add_argument(
        "--rounds", type=positive_int, default=1,
        help="repeat the whole run; figures are medians over rounds (default 1)",
    )
    parser.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> dict:
    """``run_bench``'s keyword arguments from the options; BenchError on a bad list."""
    from runtime import bench
    from runtime.backends import BACKENDS, PRECISIONS

    quick = bool(args.quick)
    if args.batch_sizes is not None:
        batch_sizes = bench.parse_batch_sizes(args.batch_sizes)
    else:
        batch_sizes = bench.QUICK_BATCH_SIZES if quick else bench.DEFAULT_BATCH_SIZES
    return {
        "backends": bench.parse_names(args.backends, [b for b in BACKENDS if b != "auto"], "--backends"),
        "precisions": bench.parse_names(args.precisions, [p for p in PRECISIONS if p != "auto"], "--precisions"),
        "batch_sizes": batch_sizes,
        "text_batch_sizes": (bench.parse_batch_sizes(args.text_batch_sizes, "--text-batch-sizes")
                             if args.text_batch_sizes else None),
        "repeats": bench.QUICK_REPEATS if quick else bench.DEFAULT_REPEATS,
        "warmup": bench.QUICK_WARMUP if quick else bench.DEFAULT_WARMUP,
        "threads": args.threads,
        "end_to_end_images": bench.QUICK_END_TO_END_IMAGES if quick else bench.DEFAULT_END_TO_END_IMAGES,
        "time_budget_s": bench.QUICK_TIME_BUDGET_S if quick else bench.DEFAULT_TIME_BUDGET_S,
    }


def run(args: argparse.Namespace) -> int:
    from runtime import bench

    settings = _settings(args)
    rounds = args.rounds
    print(f"ruclip-tiny bench {args.bundle}{' (quick)' if args.quick else ''}", file=sys.stderr)
    reports = []
    for round_index in range(rounds):
        if rounds > 1:
            print(f"  round {round_index + 1} of {rounds}", file=sys.stderr)
        reports.append(bench.run_bench(args.bundle, **settings,
                                       progress=lambda message: print(f"  {message}", file=sys.stderr)))
    report = bench.combine_rounds(reports)
    if args.out is not None:
        bench.write_report(report, args.out)
    machine = report["machine"]
    rounds_note = f"; median of {rounds} rounds" if rounds > 1 else ""
    print(f"{machine['cpu_model']}, {machine['threads']} threads; {report['date']}{rounds_note}")
    if not report["baseline"]["available"]:
        print(f"no baseline: {report['baseline']['reason']}")
    print(bench.format_table(report))
    for skipped in report["skipped"]:
        print(f"skipped {skipped['backend']} {skipped['precision']}: {skipped['reason']}")
    if report.get("files"):
        print("wrote " + ", ".join(report["files"].values()))
    return 0
