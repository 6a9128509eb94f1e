"""``ruclip-tiny embed``: a folder of images or a text file into an .npz/.parquet collection."""

from __future__ import annotations

import argparse
import sys

from .options import add_backend_options, add_exif_option, add_pixel_limit_option, load_embedder


def register(commands) -> None:
    parser = commands.add_parser(
        "embed", help="embed a folder of images or a text file into an .npz/.parquet collection"
    )
    parser.add_argument("bundle", help="bundle directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", help="directories (walked recursively, sorted), globs or files")
    source.add_argument("--texts", help="UTF-8 text file, one text per line")
    parser.add_argument("--out", required=True, help="OUT.npz or OUT.parquet")
    parser.add_argument("--no-normalize", action="store_true", help="keep the raw features (default: L2-normalised)")
    add_exif_option(parser)
    add_pixel_limit_option(parser)
    parser.add_argument("--strict", action="store_true",
                       help="exit 1 when any item failed (the collection is still written, failures listed)")
    add_backend_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from runtime import collection

    collection.output_format(args.out)
    items = collection.image_paths(args.images) if args.images else collection.text_lines(args.texts)
    kind = "images" if args.images else "texts"
    embedder = load_embedder(args, args.bundle)
    job = collection.embed_images if args.images else collection.embed_texts
    with tqdm(total=len(items), unit=kind[:-1], desc=f"embedding {kind}", file=sys.stderr) as bar:
        result = job(embedder, items, normalize=not args.no_normalize, batch_size=args.batch_size, progress=bar.update)
    result.save(args.out)
    truncated = result.metadata.get("truncated_ids", [])
    print(
        f"{len(result.ids)} {kind} embedded, {len(result.failed_ids)} failed"
        + (f", {len(truncated)} texts cut at 77 tokens" if truncated else "")
        + f" -> {args.out}"
    )
    for item, error in zip(result.failed_ids, result.failed_errors):
        print(f"  failed: {item}: {error}")
    return 1 if args.strict and result.failed_ids else 0
