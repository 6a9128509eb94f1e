"""The ``ruclip-tiny`` command line. Heavy imports happen inside the commands that need them."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import RuclipTinyError


def _stage(message: str):
    """Print a stage and, when its block ends, how long it took (long steps show progress without a bar)."""

    class _Stage:
        def __enter__(self):
            self.start = time.perf_counter()
            print(f"  {message} …", end="", flush=True)

        def __exit__(self, *exc):
            print(f" {time.perf_counter() - self.start:.1f}s", flush=True)

    return _Stage()


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo
    from .transform import image_transform, load_image

    photos = [Path(p) for p in args.images] if args.images else demo.demo_photos()
    shown, distractors = demo.demo_labels()
    labels = args.labels.split(",") if args.labels else sorted(set(shown.values())) + list(distractors)

    print("ruclip-tiny demo: zero-shot scores of the reference model")
    with _stage("loading the model"):
        if args.checkpoint:
            from .checkpoint import load_checkpoint

            model = load_checkpoint(args.checkpoint)
        else:
            from .synthetic import synthetic_model

            model = synthetic_model(seed=args.seed)
    with _stage("loading the tokenizer"):
        from .tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    with _stage(f"preprocessing {len(photos)} images"):
        import numpy as np

        transform = image_transform()
        pixels = np.stack([transform(load_image(path)) for path in photos])
    with _stage(f"scoring against {len(labels)} labels"):
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
