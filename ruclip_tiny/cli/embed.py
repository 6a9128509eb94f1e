"""``ruclip-tiny embed``: a folder of images or a text file into an .npz/.parquet collection, through resumable shards
(``OUT.parts/``), or as a Ray Data pipeline with ``--ray``. SIGINT/SIGTERM stop after the shard in flight (a second
signal drops it) and say how to continue."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading

from ..transform import DEFAULT_MAX_IMAGE_PIXELS
from .options import (
    add_backend_options,
    add_exif_option,
    add_pixel_limit_option,
    load_embedder,
    non_negative_float,
    positive_int,
)

DEFAULT_SHARD_SIZE = 256


def register(commands) -> None:
    parser = commands.add_parser(
        "embed", help="embed a folder of images or a text file into an .npz/.parquet collection"
    )
    parser.add_argument("bundle", help="bundle directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", help="directories (walked recursively, sorted), globs or files")
    source.add_argument("--texts", help="UTF-8 text file, one text per line (blank lines are skipped and counted)")
    parser.add_argument("--out", required=True, help="OUT.npz or OUT.parquet")
    parser.add_argument("--no-normalize", action="store_true", help="keep the raw features (default: L2-normalised)")
    add_exif_option(parser)
    add_pixel_limit_option(parser)
    parser.add_argument("--strict", action="store_true",
                       help="exit 1 when any item failed (the collection is still written, failures listed)")
    parser.add_argument("--shard-size", type=positive_int, default=DEFAULT_SHARD_SIZE,
                        help="items per shard written to OUT.parts/ (what an interruption can lose)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the job whose shards are in OUT.parts/ (refused if the bundle, the inputs or "
                        "the options that change rows differ)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="run as a Ray Data pipeline: 'local' (or no address) starts a local Ray for the job, "
                        "otherwise the address of a running cluster; the bundle must be at the same path on every "
                        "worker (shared storage)")
    parser.add_argument("--ray-actors", type=positive_int, default=None,
                        help="Embedder actors (default: sized from the cluster's CPUs and GPUs, leaving room for "
                        "reading and decoding)")
    parser.add_argument("--ray-gpus-per-actor", type=non_negative_float, default=0.0,
                        help="GPUs per Embedder actor; each GPU actor opens its own TensorRT / CUDA backend")
    add_backend_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from runtime import collection

    collection.output_format(args.out)
    inputs = collection.image_inputs(collection.image_paths(args.images)) if args.images \
        else collection.text_inputs(args.texts)
    if args.ray is not None:
        return _run_ray(args, inputs)
    embedder = load_embedder(args, args.bundle)
    stop = threading.Event()
    signals: list[int] = []
    with _StopOnSignals(stop, signals), _progress_bar(args, inputs) as bar:
        try:
            outcome = collection.run_embedding_job(
                embedder, inputs, args.out, shard_size=args.shard_size, normalize=not args.no_normalize,
                batch_size=args.batch_size, resume=args.resume, stop=stop, progress=bar.update if bar else None,
            )
        except KeyboardInterrupt:  # a second signal: the shard in flight is dropped
            outcome = None
    embedder.close()
    if outcome is None or not outcome.finished:
        signum = signals[-1] if signals else signal.SIGINT
        kept = f"{outcome.shards_done} of {outcome.shards} shards" if outcome else "every completed shard"
        print(f"ruclip-tiny embed: stopped by {signal.Signals(signum).name}; {kept} kept in "
              f"{collection.parts_dir(args.out)}; continue with: {_resume_command(args)}", file=sys.stderr)
        return 128 + signum
    return _report(args, inputs.kind, outcome.embedded, outcome.failed_ids, outcome.failed_errors,
                   outcome.truncated_ids, outcome.blank_lines,
                   f" (resumed: {outcome.resumed_shards} of {outcome.shards} shards were done)"
                   if outcome.resumed_shards else "")


def _report(args, kind: str, embedded: int, failed_ids, failed_errors, truncated, blank_lines: int,
            note: str = "") -> int:
    print(
        f"{embedded} {kind} embedded, {len(failed_ids)} failed"
        + (f", {len(truncated)} texts cut at 77 tokens" if truncated else "")
        + (f", {blank_lines} blank lines skipped" if blank_lines else "")
        + f" -> {args.out}{note}"
    )
    for item, error in zip(failed_ids, failed_errors):
        print(f"  failed: {item}: {error}")
    return 1 if args.strict and failed_ids else 0


def _run_ray(args: argparse.Namespace, inputs) -> int:
    if args.resume:
        from runtime.collection import CollectionError

        raise CollectionError("--resume continues a job of shards; a --ray job runs whole: drop --resume")
    from runtime.ray_data import embed_job

    options = {"batch_size": args.batch_size} if args.batch_size else {}
    result = embed_job(
        inputs, args.bundle, address=args.ray, actors=args.ray_actors, gpus_per_actor=args.ray_gpus_per_actor,
        normalize=not args.no_normalize, backend=args.backend, precision=args.precision,
        exif_transpose=args.exif_transpose, max_image_pixels=args.max_image_pixels, **options,
    )
    print(result.plan, file=sys.stderr)
    result.collection.save(args.out)
    found = result.collection
    return _report(args, inputs.kind, len(found.ids), found.failed_ids, found.failed_errors,
                   found.metadata.get("truncated_ids", []), inputs.blank_lines)


def _resume_command(args: argparse.Namespace) -> str:
    """The command that continues this job: the same inputs and row-changing options, with --resume."""
    words = ["ruclip-tiny", "embed", args.bundle]
    words += ["--images", *args.images] if args.images else ["--texts", args.texts]
    words += ["--out", args.out]
    if args.no_normalize:
        words.append("--no-normalize")
    if args.exif_transpose:
        words.append("--exif-transpose")
    if args.max_image_pixels != DEFAULT_MAX_IMAGE_PIXELS:
        words += ["--max-image-pixels", str(args.max_image_pixels)]
    if args.shard_size != DEFAULT_SHARD_SIZE:
        words += ["--shard-size", str(args.shard_size)]
    for option in ("backend", "precision"):
        if getattr(args, option) != "auto":
            words += [f"--{option}", getattr(args, option)]
    if args.batch_size:
        words += ["--batch-size", str(args.batch_size)]
    return shlex.join([*words, "--resume"])


class _StopOnSignals:
    """SIGINT and SIGTERM set ``stop`` (the job ends after the shard in flight); a second one raises
    KeyboardInterrupt (the shard in flight is dropped). The previous handlers come back on exit."""

    def __init__(self, stop: threading.Event, received: list[int]):
        self.stop, self.received, self.previous = stop, received, {}

    def _handle(self, signum, _frame) -> None:
        self.received.append(signum)
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.stop.set()
        print(f"\n{signal.Signals(signum).name}: stopping after the shard in flight (again: stop now, dropping it)",
              file=sys.stderr)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc_info) -> None:
        pass


def _progress_bar(args: argparse.Namespace, inputs):
    """A tqdm bar on stderr advanced per backend batch, with items/s and ETA, redrawn at least once a second."""
    if args.quiet:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=len(inputs), unit=inputs.kind[:-1], desc=f"embedding {inputs.kind}", file=sys.stderr,
                mininterval=0.2, maxinterval=1.0, smoothing=0.1)
