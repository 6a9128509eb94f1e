"""``ruclip-tiny build-engines``: TensorRT engines for this GPU, then their parity."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import positive_float, positive_int


def register(commands) -> None:
    parser = commands.add_parser(
        "build-engines",
        help="build TensorRT engines for this GPU from the bundle's ONNX graphs, then check their parity",
    )
    parser.add_argument("bundle", help="bundle directory (engines go to BUNDLE/engines/<trt-version>_sm<cc>/)")
    parser.add_argument(
        "--max-batch", type=positive_int, default=256, help="largest batch the engines accept (default 256)"
    )
    parser.add_argument(
        "--opt-batch", type=positive_int, default=32, help="batch the kernels are tuned for (default 32)"
    )
    parser.add_argument(
        "--opt-seq", type=positive_int, default=32, help="text length the text engine is tuned for, 1..77 (default 32)"
    )
    parser.add_argument("--workspace-gib", type=positive_float, default=None, help="builder workspace limit in GiB")
    parser.add_argument(
        "--precision", choices=["fp16", "fp32"], default="fp16", help="which ONNX graphs to build from (default fp16)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """0: built and deployable; 1: built but parity failed (engines kept, marked not deployable). Errors (no
    TensorRT/GPU, bad bundle) raise RuclipTinyError: ``main`` prints them, exit 2."""
    from export.tensorrt import build_engines
    from runtime.parity import format_table

    from ..progress import StageTimer

    root = Path(args.bundle)
    print(f"ruclip-tiny build-engines {root} ({args.precision}, batch 1..{args.max_batch}, opt {args.opt_batch})")
    result = build_engines(
        root,
        precision=args.precision,
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
        opt_sequence=args.opt_seq,
        workspace_gib=args.workspace_gib,
        progress=sys.stdout,
        timer=StageTimer(sys.stdout),
    )
    if result.parity is not None:
        print(format_table(result.parity))
    for entry in result.engines.values():
        state = "deployable" if entry.usable else "NOT deployable"
        print(f"  {entry.path}  {entry.size / 1e6:.1f} MB  {state}")
    if result.failed:
        print(
            f"PARITY FAILED for {', '.join(result.failed)} ({result.machine.describe()}): kept for inspection, "
            f"marked not deployable — see {root}/parity/report.tensorrt.json"
        )
        return 1
    print(f"engines for {result.machine.describe()} built and marked deployable in {root}")
    return 0
