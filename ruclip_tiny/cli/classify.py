"""``ruclip-tiny classify``: zero-shot classification of images against labels."""

from __future__ import annotations

import argparse

import numpy as np

from .options import (
    add_backend_options,
    add_exif_option,
    add_pixel_limit_option,
    check_template,
    load_embedder,
    positive_int,
)


def register(commands) -> None:
    parser = commands.add_parser("classify", help="zero-shot classify images against labels")
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument("images", nargs="+", help="image files, directories or globs")
    labels = parser.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help='comma-separated labels, e.g. "кошка,собака"')
    labels.add_argument("--labels-file", help="one label per line")
    parser.add_argument("--template", default="{}", help='text template for each label, e.g. "фото: {}"')
    parser.add_argument("--top", type=positive_int, default=5, help="labels shown per image (default 5)")
    add_exif_option(parser)
    add_pixel_limit_option(parser)
    parser.add_argument("--strict", action="store_true",
                          help="exit 1 when any image could not be classified (the others are still answered)")
    add_backend_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from runtime import collection

    if args.labels_file:
        labels = [line.strip() for line in collection.text_lines(args.labels_file, "--labels-file") if line.strip()]
    else:
        labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if not labels:
        raise collection.CollectionError("no labels given: pass --labels \"кошка,собака\" or --labels-file FILE")
    check_template(args.template, labels)
    paths = collection.image_paths(args.images)
    embedder = load_embedder(args, args.bundle)
    result = collection.classify_images(embedder, paths, labels, template=args.template, batch_size=args.batch_size)
    width = max(len(label) for label in labels)
    for path, row in zip(result.ids, result.probabilities):
        print(path)
        for index in np.argsort(-row, kind="stable")[: args.top]:
            print(f"  {labels[index]:<{width}}  {row[index]:.4f}")
    if result.failed_ids:  # answered like embed: the rest are classified, each broken file is listed
        print(f"{len(result.ids)} images classified, {len(result.failed_ids)} failed")
        for item, error in zip(result.failed_ids, result.failed_errors):
            print(f"  failed: {item}: {error}")
    return 1 if args.strict and result.failed_ids else 0
