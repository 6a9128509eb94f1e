"""``ruclip-tiny parity``: any backend against the reference outputs stored in a bundle."""

from __future__ import annotations

import argparse


def register(commands) -> None:
    parser = commands.add_parser(
        "parity", help="compare a backend's outputs with the bundle's stored reference outputs (onnxruntime: no torch)"
    )
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument("--precision", choices=["fp32", "fp16", "all"], default="all",
                        help="which graphs to check (all: each the backend can run here)")
    parser.add_argument(
        "--backend",
        default="onnxruntime",
        choices=["onnxruntime", "torch", "tensorrt", "auto"],
        help="what runs the probe (default onnxruntime: the bundle's ONNX graphs)",
    )
    parser.add_argument("--providers", help="onnxruntime providers, comma-separated (cpu, cuda, tensorrt)")
    parser.add_argument("--device", help="torch backend device: cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="only report: write no report, plot or deployable flag into the bundle (for a read-only bundle)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from runtime.parity import parity_command

    return parity_command(
        args.bundle, precision=args.precision, providers=args.providers, backend=args.backend, device=args.device,
        write=not args.no_write,
    )
