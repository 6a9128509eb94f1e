"""``ruclip-tiny search``: rank an embedded collection by a text query or an image."""

from __future__ import annotations

import argparse

from .options import add_backend_options, load_embedder, positive_int


def register(commands) -> None:
    parser = commands.add_parser("search", help="rank an embedded image collection by a text query or an image")
    parser.add_argument("collection", help="OUT.npz / OUT.parquet written by ruclip-tiny embed")
    parser.add_argument("query", nargs="?", help="text query")
    parser.add_argument("--image", help="rank by similarity to this image instead of a text")
    parser.add_argument("--top", type=positive_int, default=5, help="items shown")
    parser.add_argument("--bundle", help="bundle to embed the query with (default: the one the collection names)")
    add_backend_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from runtime.collection import Collection, CollectionError

    found = Collection.load(args.collection)
    bundle = args.bundle or found.metadata.get("bundle")
    if not bundle:
        raise CollectionError(f"{args.collection} does not name its bundle; pass --bundle BUNDLE")
    embedder = load_embedder(args, bundle)
    if args.image:
        query = embedder.encode_images([args.image])[0]
    elif args.query is not None:
        query = embedder.encode_texts([args.query])[0]
    else:
        raise CollectionError('give a text query ("кошка на диване") or --image PATH')
    for rank, (row, score) in enumerate(found.rank_indices(query, args.top), 1):
        # a text collection shows each text after its line number
        text = f"  {_shown(found.texts[row])}" if found.texts else ""
        print(f"{rank:>3}  {score:.4f}  {found.ids[row]}{text}")
    return 0


def _shown(text: str, limit: int = 200) -> str:
    """A text on one line of the answer: at most ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
