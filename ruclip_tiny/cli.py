"""The ``ruclip-tiny`` command line. Heavy imports happen inside the commands that need them, so ``parity`` (and
later ``embed``/``serve``) run on a torch-free install."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from .errors import RuclipTinyError
from .progress import StageTimer
from .transform import DEFAULT_MAX_IMAGE_PIXELS


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo
    from .transform import image_transform, load_image

    photos = [Path(p) for p in args.images] if args.images else demo.demo_photos()
    shown, distractors = demo.demo_labels()
    labels = args.labels.split(",") if args.labels else sorted(set(shown.values())) + list(distractors)
    _check_template(args.template, labels)  # before the model loads: a bad template costs nothing

    print("ruclip-tiny demo: zero-shot scores of the reference model")
    timer = StageTimer()
    with timer.stage("loading the model"):
        from .synthetic import load_model

        model = load_model(args.checkpoint, seed=args.seed)
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
        args.out, checkpoint=args.checkpoint, tokenizer=args.tokenizer, force=args.force, seed=args.seed, timer=timer,
        on_removed=lambda removed: print(f"  {removed.describe()}"),
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

    return parity_command(
        args.bundle, precision=args.precision, providers=args.providers, backend=args.backend, device=args.device,
        write=not args.no_write,
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from runtime.bench import bench_command

    return bench_command(args)


def _check_template(template: str, labels: list[str]) -> None:
    from .template import TemplateError, fill_template

    try:
        fill_template(template, labels)
    except TemplateError as exc:
        raise TemplateError(f"--template: {exc}") from None


def _load_embedder(args: argparse.Namespace, bundle: str):
    from runtime.embedder import Embedder

    options = {"batch_size": args.batch_size} if args.batch_size else {}
    if getattr(args, "max_image_pixels", None) is not None:
        options["max_image_pixels"] = args.max_image_pixels
    embedder = Embedder.load(bundle, backend=args.backend, precision=args.precision,
                             exif_transpose=getattr(args, "exif_transpose", False), **options)
    print(f"{embedder.backend.describe()} ({embedder.selection})", file=sys.stderr)
    if embedder.synthetic:
        print("SYNTHETIC weights: these embeddings prove the toolchain, they mean nothing", file=sys.stderr)
    return embedder


def _cmd_embed(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from runtime import collection

    collection.output_format(args.out)
    items = collection.image_paths(args.images) if args.images else collection.text_lines(args.texts)
    kind = "images" if args.images else "texts"
    embedder = _load_embedder(args, args.bundle)
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


def _cmd_classify(args: argparse.Namespace) -> int:
    from runtime import collection

    if args.labels_file:
        labels = [line.strip() for line in collection.text_lines(args.labels_file, "--labels-file") if line.strip()]
    else:
        labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if not labels:
        raise collection.CollectionError("no labels given: pass --labels \"кошка,собака\" or --labels-file FILE")
    _check_template(args.template, labels)
    paths = collection.image_paths(args.images)
    embedder = _load_embedder(args, args.bundle)
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


def _cmd_search(args: argparse.Namespace) -> int:
    from runtime.collection import Collection, CollectionError

    found = Collection.load(args.collection)
    bundle = args.bundle or found.metadata.get("bundle")
    if not bundle:
        raise CollectionError(f"{args.collection} does not name its bundle; pass --bundle BUNDLE")
    embedder = _load_embedder(args, bundle)
    if args.image:
        query = embedder.encode_images([args.image])[0]
    elif args.query is not None:
        query = embedder.encode_texts([args.query])[0]
    else:
        raise CollectionError('give a text query ("кошка на диване") or --image PATH')
    for rank, (item, score) in enumerate(found.rank(query, args.top), 1):
        print(f"{rank:>3}  {score:.4f}  {item}")
    return 0


def _cmd_build_engines(args: argparse.Namespace) -> int:
    from export.tensorrt import build_engines_command

    return build_engines_command(
        args.bundle,
        precision=args.precision,
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
        opt_sequence=args.opt_seq,
        workspace_gib=args.workspace_gib,
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn  # a missing serve extra is named by main()

    from runtime.server import ServerSettings, create_app, uvicorn_config
    from runtime.embedder import Embedder

    try:
        settings = ServerSettings(
            max_batch=args.max_batch, max_image_batch=args.max_image_batch, max_wait_ms=args.max_wait_ms,
            batching=not args.no_batching,
            max_queue_items=args.max_queue_items, max_items=args.max_items, max_image_bytes=args.max_image_bytes,
            max_text_chars=args.max_text_chars, max_body_bytes=args.max_body_bytes,
            decode_workers=args.decode_workers, exif_transpose=args.exif_transpose,
            max_image_pixels=args.max_image_pixels, max_request_pixels=args.max_request_pixels,
            api_key=args.api_key if args.api_key is not None else os.environ.get("RUCLIP_TINY_API_KEY") or None,
            timeout_keep_alive_s=args.timeout_keep_alive, request_timeout_s=args.request_timeout,
            limit_concurrency=args.limit_concurrency,
        )
    except ValueError as exc:
        raise RuclipTinyError(f"serve: {exc}") from None
    options = {"intra_op_threads": args.threads} if args.threads else {}
    embedder = Embedder.load(args.bundle, backend=args.backend, precision=args.precision,
                             allow_not_deployable=args.allow_not_deployable, **options)
    print(f"serving {args.bundle}: {embedder.backend.describe()} ({embedder.selection})")
    if embedder.synthetic:
        print("SYNTHETIC weights: the embeddings prove the toolchain, they mean nothing (/v1/info says so too)")
    batching = "off" if args.no_batching else f"max batch {args.max_batch}, max wait {args.max_wait_ms} ms"
    print(f"dynamic batching: {batching}; http://{args.host}:{args.port} (/readyz turns 200 after warm-up)")
    if settings.api_key:
        print("API key set: every endpoint but /healthz and /readyz needs 'Authorization: Bearer KEY'")
    uvicorn.Server(uvicorn_config(create_app(embedder, settings), host=args.host, port=args.port,
                                  log_level=args.log_level, timeout_graceful_shutdown=args.graceful_timeout)).run()
    return 0


def _cmd_triton_repo(args: argparse.Namespace) -> int:
    from export.triton import write_triton_repository

    models = write_triton_repository(
        args.bundle, args.out, platform=args.platform, precision=args.precision, max_batch=args.max_batch,
        max_queue_delay_us=args.max_queue_delay_us, instance_count=args.instances, instance_kind=args.instance_kind,
        trt_version=args.trt_version, force=args.force, allow_not_deployable=args.allow_not_deployable,
    )
    print(f"wrote Triton model repository {args.out} ({args.platform}):")
    for model in models:
        print(f"  {model.name}: {', '.join(model.files)}")
    print(f"start it with: tritonserver --model-repository={Path(args.out).resolve()}  (see {args.out}/README.md)")
    if models and models[0].synthetic:
        print("SYNTHETIC weights: the models prove the toolchain, their embeddings mean nothing")
    return 0


def positive_int(text: str) -> int:
    """argparse type of every batch size, count and size limit: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small: it must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """argparse type of a delay counted in whole units, where 0 means none: an integer of at least 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: it must be at least 0")
    return value


def non_negative_float(text: str) -> float:
    """argparse type of a time limit or delay: a finite number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not allowed: it must be a finite number of at least 0")
    return value


def positive_float(text: str) -> float:
    """argparse type of a size in fractional units (GiB): a finite number above 0."""
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text} is too small: it must be above 0")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the help already says it in words (``(default …``)
    or there is none to show (None, a flag that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if "(default" in help_text or action.default is None or action.default is False:
            return help_text
        return super()._get_help_string(action)


class _CommandParser(argparse.ArgumentParser):
    """The parser of each subcommand: its --help shows the defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


_TOKENIZER_HELP = (
    "tokenizer directory (vocab.txt, tokenizer_config.json), or a Hugging Face id such as "
    "DeepPavlov/distilrubert-tiny-cased-conversational-v1 (default: the shipped demo vocabulary). An id is taken "
    "from the local Hugging Face cache; only when it is not cached and the hub answers within 3 s are its tokenizer "
    "files downloaded into that cache. HF_HUB_OFFLINE=1 forbids the download"
)


def _add_exif_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--exif-transpose", action="store_true",
        help="turn each image by its EXIF orientation tag before preprocessing. Off by default, as the original "
        "model never applied it: on departs from the reference (a sideways phone photo is embedded upright)",
    )


def _add_pixel_limit_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-image-pixels", type=positive_int, default=DEFAULT_MAX_IMAGE_PIXELS,
        help="most pixels (width x height) of one image, read from its header before decoding; a larger image is "
        "listed as a failure (default 60000000: a 48 MP photo passes)",
    )


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "torch", "tensorrt"],
                        help="what runs the encoders (auto: TensorRT engines, else ONNX Runtime on CUDA, else CPU)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16"],
                        help="which graphs or engines (auto: fp16 on a GPU, fp32 on a CPU)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="rows per backend call (default: the embedder's, 32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ruclip-tiny", description="RuCLIP tiny: reference, export, runtime.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)

    demo = commands.add_parser(
        "demo",
        help="zero-shot scores of the reference model for the demo photos (synthetic weights unless --checkpoint)",
    )
    demo.add_argument("--checkpoint", help="ru-clip-tiny.pkl or .safetensors (default: synthetic weights)")
    demo.add_argument("--tokenizer", help=_TOKENIZER_HELP)
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights (default 0)")
    demo.add_argument("--images", nargs="+", help="image files (default: the shipped demo photos)")
    demo.add_argument("--labels", help="comma-separated labels (default: the demo labels and distractors)")
    demo.add_argument("--template", default="{}", help='text template for each label, e.g. "фото: {}"')
    demo.add_argument("--top", type=positive_int, default=3, help="labels shown per image (default 3)")
    demo.set_defaults(func=_cmd_demo)

    export = commands.add_parser("export", help="export the reference to a bundle: ONNX, FP16 ONNX, probe, manifest")
    export.add_argument("--checkpoint", help="ru-clip-tiny.pkl or .safetensors (default: synthetic weights)")
    export.add_argument("--tokenizer", help=_TOKENIZER_HELP)
    export.add_argument("--out", required=True, help="bundle directory to create")
    export.add_argument("--force", action="store_true", help="replace an existing bundle (only once the new one is complete)")
    export.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights (default 0)")
    export.set_defaults(func=_cmd_export)

    parity = commands.add_parser(
        "parity", help="compare a backend's outputs with the bundle's stored reference outputs (onnxruntime: no torch)"
    )
    parity.add_argument("bundle", help="bundle directory")
    parity.add_argument("--precision", choices=["fp32", "fp16", "all"], default="all",
                        help="which graphs to check (all: each the backend can run here)")
    parity.add_argument(
        "--backend",
        default="onnxruntime",
        choices=["onnxruntime", "torch", "tensorrt", "auto"],
        help="what runs the probe (default onnxruntime: the bundle's ONNX graphs)",
    )
    parity.add_argument("--providers", help="onnxruntime providers, comma-separated (cpu, cuda, tensorrt)")
    parity.add_argument("--device", help="torch backend device: cpu, cuda or cuda:N (default: cuda when available)")
    parity.add_argument(
        "--no-write",
        action="store_true",
        help="only report: write no report, plot or deployable flag into the bundle (for a read-only bundle)",
    )
    parity.set_defaults(func=_cmd_parity)

    embed = commands.add_parser("embed", help="embed a folder of images or a text file into an .npz/.parquet collection")
    embed.add_argument("bundle", help="bundle directory")
    source = embed.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", help="directories (walked recursively, sorted), globs or files")
    source.add_argument("--texts", help="UTF-8 text file, one text per line")
    embed.add_argument("--out", required=True, help="OUT.npz or OUT.parquet")
    embed.add_argument("--no-normalize", action="store_true", help="keep the raw features (default: L2-normalised)")
    _add_exif_option(embed)
    _add_pixel_limit_option(embed)
    embed.add_argument("--strict", action="store_true",
                       help="exit 1 when any item failed (the collection is still written, failures listed)")
    _add_backend_options(embed)
    embed.set_defaults(func=_cmd_embed)

    classify = commands.add_parser("classify", help="zero-shot classify images against labels")
    classify.add_argument("bundle", help="bundle directory")
    classify.add_argument("images", nargs="+", help="image files, directories or globs")
    labels = classify.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help='comma-separated labels, e.g. "кошка,собака"')
    labels.add_argument("--labels-file", help="one label per line")
    classify.add_argument("--template", default="{}", help='text template for each label, e.g. "фото: {}"')
    classify.add_argument("--top", type=positive_int, default=5, help="labels shown per image (default 5)")
    _add_exif_option(classify)
    _add_pixel_limit_option(classify)
    classify.add_argument("--strict", action="store_true",
                          help="exit 1 when any image could not be classified (the others are still answered)")
    _add_backend_options(classify)
    classify.set_defaults(func=_cmd_classify)

    search = commands.add_parser("search", help="rank an embedded image collection by a text query or an image")
    search.add_argument("collection", help="OUT.npz / OUT.parquet written by ruclip-tiny embed")
    search.add_argument("query", nargs="?", help="text query")
    search.add_argument("--image", help="rank by similarity to this image instead of a text")
    search.add_argument("--top", type=positive_int, default=5, help="items shown")
    search.add_argument("--bundle", help="bundle to embed the query with (default: the one the collection names)")
    _add_backend_options(search)
    search.set_defaults(func=_cmd_search)

    bench = commands.add_parser(
        "bench", help="latency and throughput of the runtime against the original torch eager fp32 pipeline"
    )
    bench.add_argument("bundle", help="bundle directory (nothing is written into it)")
    bench.add_argument("--backends", default="onnxruntime", help="comma-separated: onnxruntime,torch,tensorrt")
    bench.add_argument("--precisions", default="fp32", help="comma-separated: fp32,fp16")
    bench.add_argument("--batch-sizes", default=None, help="comma-separated batch sizes (default 1,8,32; quick: 1,8)")
    bench.add_argument(
        "--text-batch-sizes", default=None, help="batch sizes of the text workloads (default: --batch-sizes)"
    )
    bench.add_argument(
        "--threads", type=positive_int, default=None,
        help="torch threads = ONNX Runtime intra-op threads (default: all cores)"
    )
    bench.add_argument("--out", default=None, help="directory for bench.json and bench.png")
    bench.add_argument("--quick", action="store_true", help="few repeats, batch sizes 1 and 8, 8 JPEGs end to end")
    bench.add_argument(
        "--rounds", type=positive_int, default=1, help="repeat the whole run; figures are medians over rounds (default 1)"
    )
    bench.set_defaults(func=_cmd_bench)

    engines = commands.add_parser(
        "build-engines",
        help="build TensorRT engines for this GPU from the bundle's ONNX graphs, then check their parity",
    )
    engines.add_argument("bundle", help="bundle directory (engines go to BUNDLE/engines/<trt-version>_sm<cc>/)")
    engines.add_argument("--max-batch", type=positive_int, default=256, help="largest batch the engines accept (default 256)")
    engines.add_argument("--opt-batch", type=positive_int, default=32, help="batch the kernels are tuned for (default 32)")
    engines.add_argument(
        "--opt-seq", type=positive_int, default=32, help="text length the text engine is tuned for, 1..77 (default 32)"
    )
    engines.add_argument("--workspace-gib", type=positive_float, default=None, help="builder workspace limit in GiB")
    engines.add_argument(
        "--precision", choices=["fp16", "fp32"], default="fp16", help="which ONNX graphs to build from (default fp16)"
    )
    engines.set_defaults(func=_cmd_build_engines)

    serve = commands.add_parser("serve", help="serve embeddings over HTTP with dynamic batching (needs the serve extra)")
    serve.add_argument("bundle", help="bundle directory")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    serve.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "torch", "tensorrt"],
                       help="what runs the encoders (auto: TensorRT engines, else ONNX Runtime on CUDA, else CPU)")
    serve.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16"],
                       help="which graphs or engines (auto: fp16 on a GPU, fp32 on a CPU)")
    serve.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    serve.add_argument("--max-batch", type=positive_int, default=64, help="most items per backend call (default 64)")
    serve.add_argument("--max-image-batch", type=positive_int, default=None,
                       help="most images per backend call (default: 1 on a CPU, where merging images gains nothing "
                       "and texts wait for at most one image call; else --max-batch)")
    serve.add_argument("--max-wait-ms", type=non_negative_float, default=5.0,
                       help="longest a request waits for others to join its batch (default 5)")
    serve.add_argument("--no-batching", action="store_true", help="run every request as its own backend call")
    serve.add_argument("--max-queue-items", type=positive_int, default=1024,
                       help="queued items beyond which requests get 503 + Retry-After (default 1024)")
    serve.add_argument("--max-items", type=positive_int, default=64, help="texts, images or labels per request (default 64)")
    serve.add_argument("--max-image-bytes", type=positive_int, default=10 << 20, help="bytes of one encoded image (10 MiB)")
    serve.add_argument("--max-text-chars", type=positive_int, default=2000, help="characters of one text (default 2000)")
    serve.add_argument("--max-body-bytes", type=positive_int, default=32 << 20, help="bytes of one request body (32 MiB)")
    serve.add_argument("--decode-workers", type=positive_int, default=None, help="image decoding threads (min(8, CPUs))")
    serve.add_argument("--timeout-keep-alive", type=positive_float, default=5.0,
                       help="seconds an idle keep-alive connection is kept open (default 5)")
    serve.add_argument("--request-timeout", type=positive_float, default=30.0,
                       help="seconds a connection gets to deliver a whole request, headers and body; then 408 and "
                       "closed (default 30)")
    serve.add_argument("--limit-concurrency", type=positive_int, default=512,
                       help="open connections (or requests in progress) beyond which requests get 503 with "
                       "Retry-After (default 512)")
    serve.add_argument("--graceful-timeout", type=non_negative_float, default=30.0,
                       help="seconds in-flight requests get to finish on shutdown (default 30)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                       help="uvicorn's log level")
    _add_exif_option(serve)
    serve.add_argument("--max-image-pixels", type=positive_int, default=DEFAULT_MAX_IMAGE_PIXELS,
                       help="most pixels of one image, from its header before decoding; a larger one is answered "
                       "null with an errors entry (default 60000000)")
    serve.add_argument("--max-request-pixels", type=positive_int, default=256_000_000,
                       help="most pixels of all images of one request, from their headers; over it: 413 "
                       "(default 256000000)")
    serve.add_argument("--api-key", default=None,
                       help="require 'Authorization: Bearer KEY' on every endpoint but /healthz and /readyz "
                       "(default: $RUCLIP_TINY_API_KEY if set, else no key)")
    serve.add_argument("--allow-not-deployable", action="store_true",
                       help="serve artifacts whose parity check has not passed")
    serve.set_defaults(func=_cmd_serve)

    triton = commands.add_parser("triton-repo", help="write a Triton Inference Server model repository from a bundle")
    triton.add_argument("bundle", help="bundle directory")
    triton.add_argument("--out", required=True, help="repository directory to create")
    triton.add_argument("--platform", default="onnxruntime", choices=["onnxruntime", "tensorrt"],
                        help="what runs the encoders in Triton (tensorrt: the bundle's engines)")
    triton.add_argument("--precision", default=None, choices=["fp32", "fp16"],
                        help="graphs/engines to use (default: fp32 for onnxruntime, fp16 for tensorrt)")
    triton.add_argument("--max-batch", type=positive_int, default=64, help="max_batch_size of both models (default 64)")
    triton.add_argument("--max-queue-delay-us", type=non_negative_int, default=1000,
                        help="dynamic batching: longest a request waits for a batch, in microseconds (default 1000)")
    triton.add_argument("--instances", type=positive_int, default=1, help="model instances per device (default 1)")
    triton.add_argument("--instance-kind", default=None, choices=["auto", "gpu", "cpu"],
                        help="where instances run (default: auto for onnxruntime, gpu for tensorrt)")
    triton.add_argument("--trt-version", default=None,
                        help="TensorRT version of the engines to use when the bundle has several")
    triton.add_argument("--force", action="store_true", help="replace an existing non-empty --out")
    triton.add_argument("--allow-not-deployable", action="store_true",
                        help="include artifacts whose parity check has not passed")
    triton.set_defaults(func=_cmd_triton_repo)
    return parser


# The top-level modules each extra of pyproject.toml brings: a command that lacks one names the extra to install.
_EXTRA_OF_MODULE = {
    **dict.fromkeys(
        ("torch", "torchvision", "timm", "transformers", "safetensors", "onnx", "onnxscript", "polygraphy"), "export"
    ),
    **dict.fromkeys(("fastapi", "starlette", "uvicorn", "multipart", "python_multipart", "prometheus_client",
                     "orjson"), "serve"),
    "tensorrt": "gpu",
    "matplotlib": "plots",
    "pyarrow": "parquet",
}


def missing_extra_error(command: str, exc: ImportError) -> RuclipTinyError | None:
    """The error to show when ``command`` failed importing a module of an optional extra (None: not one of those,
    a real bug to let through)."""
    module = (exc.name or "").partition(".")[0]
    extra = _EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    first = " (install torch first: pip install torch==2.14.1 torchvision==0.29.1)" if module == "torch" else ""
    return RuclipTinyError(
        f"{command} needs the {extra} extra, and {module} is not installed: from a checkout of ruclip-tiny run "
        f"pip install '.[{extra}]'{first}"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RuclipTinyError as exc:
        print(f"\nruclip-tiny {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        error = missing_extra_error(args.command, exc)
        if error is None:
            raise
        print(f"\nruclip-tiny {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C is a request, not a crash; 130 = 128 + SIGINT, what a shell reports for an interrupted command.
        print(f"\nruclip-tiny {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
