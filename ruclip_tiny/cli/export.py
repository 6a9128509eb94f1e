"""``ruclip-tiny export``: build a bundle from the reference and gate it with parity."""

from __future__ import annotations

import argparse
import sys

from ..progress import StageTimer
from .options import TOKENIZER_HELP


def register(commands) -> None:
    parser = commands.add_parser("export", help="export the reference to a bundle: ONNX, FP16 ONNX, probe, manifest")
    parser.add_argument("--checkpoint", help="ru-clip-tiny.pkl or .safetensors (default: synthetic weights)")
    parser.add_argument("--tokenizer", help=TOKENIZER_HELP)
    parser.add_argument("--out", required=True, help="bundle directory to create")
    parser.add_argument(
        "--force", action="store_true", help="replace an existing bundle (only once the new one is complete)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights (default 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from export.bundle import export_bundle
    from runtime.manifest import ONNX_FORMAT

    timer = StageTimer(sys.stdout)
    print(f"ruclip-tiny export -> {args.out}")
    manifest = export_bundle(
        args.out, checkpoint=args.checkpoint, tokenizer=args.tokenizer, force=args.force, seed=args.seed, timer=timer,
        on_removed=lambda removed: print(f"  {removed.describe()}"), on_line=print,
    )
    graphs = {key: entry for key, entry in manifest.artifacts.items() if entry.format == ONNX_FORMAT}
    failed = sorted(key for key, entry in graphs.items() if not entry.usable)
    print(f"wrote {args.out} in {timer.total:.0f}s ({'SYNTHETIC weights' if manifest.synthetic else 'checkpoint'})")
    if failed:
        print(f"PARITY FAILED for {', '.join(failed)}: marked not deployable (see {args.out}/parity/report.json)")
        return 1
    print(f"all {len(graphs)} graphs passed parity and are marked deployable")
    return 0
