"""``ruclip-tiny demo``: the reference model's zero-shot scores for the demo photos."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..progress import StageTimer
from .options import TOKENIZER_HELP, check_template, positive_int


def register(commands) -> None:
    parser = commands.add_parser(
        "demo",
        help="zero-shot scores of the reference model for the demo photos (synthetic weights unless --checkpoint)",
    )
    parser.add_argument("--checkpoint", help="ru-clip-tiny.pkl or .safetensors (default: synthetic weights)")
    parser.add_argument("--tokenizer", help=TOKENIZER_HELP)
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights (default 0)")
    parser.add_argument("--images", nargs="+", help="image files (default: the shipped demo photos)")
    parser.add_argument("--labels", help="comma-separated labels (default: the demo labels and distractors)")
    parser.add_argument("--template", default="{}", help='text template for each label, e.g. "фото: {}"')
    parser.add_argument("--top", type=positive_int, default=3, help="labels shown per image (default 3)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import demo
    from ..transform import image_transform, load_image

    photos = [Path(p) for p in args.images] if args.images else demo.demo_photos()
    shown, distractors = demo.demo_labels()
    labels = args.labels.split(",") if args.labels else sorted(set(shown.values())) + list(distractors)
    check_template(args.template, labels)  # before the model loads: a bad template costs nothing

    print("ruclip-tiny demo: zero-shot scores of the reference model")
    timer = StageTimer(sys.stdout)
    with timer.stage("loading the model"):
        from ..synthetic import load_model

        model = load_model(args.checkpoint, seed=args.seed)
    with timer.stage("loading the tokenizer"):
        from ..tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    with timer.stage(f"preprocessing {len(photos)} images"):
        import numpy as np

        transform = image_transform()
        pixels = np.stack([transform(load_image(path)) for path in photos])
    with timer.stage(f"scoring against {len(labels)} labels"):
        from ..zero_shot import zero_shot_probs

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
