"""The ``ruclip-tiny`` command line. Heavy imports happen inside the commands that need them, so ``parity`` (and
later ``embed``/``serve``) run on a torch-free install."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import RuclipTinyError
from .progress import StageTimer


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo
    from .transform import image_transform, load_image

    photos = [Path(p) for p in args.images] if args.images else demo.demo_photos()
    shown, distractors = demo.demo_labels()
    labels = args.labels.split(",") if args.labels else sorted(set(shown.values())) + list(distractors)

    print("ruclip-tiny demo: zero-shot scores of the reference model")
    timer = StageTimer()
    with timer.stage("loading the model"):
        if args.checkpoint:
            from .checkpoint import load_checkpoint

            model = load_checkpoint(args.checkpoint)
        else:
            from .synthetic import synthetic_model

            model = synthetic_model(seed=args.seed)
    with timer.stage("loading the tokenizer"):
        from .tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    with timer.stage(f"preprocessing {len(photos)} images"):
        import numpy as np

        transform = image_transform()
        pixels = np.stack([transform(load_image(path)) for path in photos])
    with timer.stage(f"scoring against {len(labels)} labels"):
        from .zero_shot import zero_shot_probs

        probs = zero_shot_probs(model, tokenizer, pixels, labels, template=args.template)

    print(f"weights:   {model.checkpoint_info.label}")
    print(f"tokenizer: {tokenizer.source}{' (shipped demo vocabulary)' if tokenizer.is_demo else ''}")
    if model.checkpoint_info.synthetic:
        print("SYNTHETIC weights: the scores below are not predictions, they show the chain runs end to end.")
        print("For real predictions: ruclip-tiny demo --checkpoint ru-clip-tiny.pkl --tokenizer DIR")
    width = max(len(p.name) for p in photos)
    for path, row in zip(photos, probs):
        top = np.argsort(-row)[: args.top]
        ranked = "  ".join(f"{labels[i]} {row[i]:.3f}" for i in top)
        print(f"  {path.name:<{width}}  {ranked}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from export.bundle import export_bundle

    timer = StageTimer()
    print(f"ruclip-tiny export -> {args.out}")
    manifest = export_bundle(
        args.out, checkpoint=args.checkpoint, tokenizer=args.tokenizer, force=args.force, seed=args.seed, timer=timer
    )
    graphs = {key: entry for key, entry in manifest["artifacts"].items() if entry.get("format") == "onnx"}
    failed = sorted(key for key, entry in graphs.items() if not entry["deployable"])
    print(f"wrote {args.out} in {timer.total:.0f}s ({'SYNTHETIC weights' if manifest['synthetic'] else 'checkpoint'})")
    if failed:
        print(f"PARITY FAILED for {', '.join(failed)}: marked not deployable (see {args.out}/parity/report.json)")
        return 1
    print(f"all {len(graphs)} graphs passed parity and are marked deployable")
    return 0


def _cmd_parity(args: argparse.Namespace) -> int:
    from runtime.parity import parity_command

    return parity_command(args.bundle, precision=args.precision)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ruclip-tiny", description="RuCLIP tiny: reference, export, runtime.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="zero-shot scores of the reference model for the demo photos (synthetic weights unless --checkpoint)",
    )
    demo.add_argument("--checkpoint", help="ru-clip-tiny.pkl or .safetensors (default: synthetic weights)")
    demo.add_argument("--tokenizer", help="tokenizer directory (default: the shipped demo vocabulary)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights (default 0)")
    demo.add_argument("--images", nargs="+", help="image files (default: the shipped demo photos)")
    demo.add_argument("--labels", help="comma-separated labels (default: the demo labels and distractors)")
    demo.add_argument("--template", default="{}", help='text template for each label, e.g. "фото: {}"')
    demo.add_argument("--top", type=int, default=3, help="labels shown per image (default 3)")
    demo.set_defaults(func=_cmd_demo)

    export = commands.add_parser("export", help="export the reference to a bundle: ONNX, FP16 ONNX, probe, manifest")
    export.add_argument("--checkpoint", help="ru-clip-tiny.pkl or .safetensors (default: synthetic weights)")
    export.add_argument("--tokenizer", help="tokenizer directory or id (default: the shipped demo vocabulary)")
    export.add_argument("--out", required=True, help="bundle directory to create")
    export.add_argument("--force", action="store_true", help="replace an existing bundle (only once the new one is complete)")
    export.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights (default 0)")
    export.set_defaults(func=_cmd_export)

    parity = commands.add_parser("parity", help="compare a bundle's graphs with its stored reference outputs (no torch)")
    parity.add_argument("bundle", help="bundle directory")
    parity.add_argument("--precision", choices=["fp32", "fp16", "all"], default="all")
    parity.set_defaults(func=_cmd_parity)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RuclipTinyError as exc:
        print(f"\nruclip-tiny {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
