"""What several commands share: argparse types that refuse bad numbers, the help formatter that shows
defaults, the common options, and loading an embedder with a line saying what runs."""

from __future__ import annotations

import argparse
import sys

from ..transform import DEFAULT_MAX_IMAGE_PIXELS


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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the help already says it in words (``(default …``)
    or there is none to show (None, a flag that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if "(default" in help_text or action.default is None or action.default is False:
            return help_text
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """The parser of each subcommand: its --help shows the defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


TOKENIZER_HELP = (
    "tokenizer directory (vocab.txt, tokenizer_config.json), or a Hugging Face id such as "
    "DeepPavlov/distilrubert-tiny-cased-conversational-v1 (default: the shipped demo vocabulary). An id is taken "
    "from the local Hugging Face cache; only when it is not cached and the hub answers within 3 s are its tokenizer "
    "files downloaded into that cache. HF_HUB_OFFLINE=1 forbids the download"
)


def add_exif_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--exif-transpose", action="store_true",
        help="turn each image by its EXIF orientation tag before preprocessing. Off by default, as the original "
        "model never applied it: on departs from the reference (a sideways phone photo is embedded upright)",
    )


def add_pixel_limit_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-image-pixels", type=positive_int, default=DEFAULT_MAX_IMAGE_PIXELS,
        help="most pixels (width x height) of one image, read from its header before decoding; a larger image is "
        "listed as a failure (default 60000000: a 48 MP photo passes)",
    )


def add_backend_options(parser: argparse.ArgumentParser, batch_size: bool = True) -> None:
    """--backend and --precision (choices from the backend registry), and --batch-size unless ``batch_size`` is
    False (the server batches by its own flags)."""
    from runtime.backends import BACKENDS, PRECISIONS

    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="what runs the encoders (auto: TensorRT engines, else ONNX Runtime on CUDA, else CPU)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="which graphs or engines (auto: fp16 on a GPU, fp32 on a CPU)")
    if batch_size:
        parser.add_argument("--batch-size", type=positive_int, default=None,
                            help="rows per backend call (default: the embedder's, 32)")


def check_template(template: str, labels: list[str]) -> None:
    from ..template import TemplateError, fill_template

    try:
        fill_template(template, labels)
    except TemplateError as exc:
        raise TemplateError(f"--template: {exc}") from None


def load_embedder(args: argparse.Namespace, bundle: str):
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
