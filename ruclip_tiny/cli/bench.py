"""``ruclip-tiny bench``: latency and throughput of the runtime against the torch baseline."""

from __future__ import annotations

import argparse

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
    parser.add_argument("--out", default=None, help="directory for parser.json and parser.png")
    parser.add_argument("--quick", action="store_true", help="few repeats, batch sizes 1 and 8, 8 JPEGs end to end")
    parser.add_argument(
        "--rounds", type=positive_int, default=1, help="repeat the whole run; figures are medians over rounds (default 1)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from runtime.bench import bench_command

    return bench_command(args)
