"""``ruclip-tiny build-engines``: TensorRT engines for this GPU, then their parity."""

from __future__ import annotations

import argparse

from .options import positive_float, positive_int


def register(commands) -> None:
    parser = commands.add_parser(
        "build-engines",
        help="build TensorRT engines for this GPU from the bundle's ONNX graphs, then check their parity",
    )
    parser.add_argument("bundle", help="bundle directory (engines go to BUNDLE/engines/<trt-version>_sm<cc>/)")
    parser.add_argument("--max-batch", type=positive_int, default=256, help="largest batch the engines accept (default 256)")
    parser.add_argument("--opt-batch", type=positive_int, default=32, help="batch the kernels are tuned for (default 32)")
    parser.add_argument(
        "--opt-seq", type=positive_int, default=32, help="text length the text engine is tuned for, 1..77 (default 32)"
    )
    parser.add_argument("--workspace-gib", type=positive_float, default=None, help="builder workspace limit in GiB")
    parser.add_argument(
        "--precision", choices=["fp16", "fp32"], default="fp16", help="which ONNX graphs to build from (default fp16)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from export.tensorrt import build_engines_command

    return build_engines_command(
        args.bundle,
        precision=args.precision,
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
        opt_sequence=args.opt_seq,
        workspace_gib=args.workspace_gib,
    )
