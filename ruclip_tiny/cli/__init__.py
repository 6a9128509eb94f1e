"""The ``ruclip-tiny`` command line: the roof of the house. Each command is a module of this package with a
``register(commands)`` that adds its parser and a ``run(args)`` that does the work; heavy imports happen inside
``run``, so ``parity``, ``embed`` and ``serve`` work on a torch-free install. Only this package prints and picks exit
codes: the libraries below return results or raise ``RuclipTinyError``."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import RuclipTinyError
from . import bench, build_engines, classify, demo, embed, export, parity, search, serve, triton_repo
from .options import CommandParser

COMMANDS = (demo, export, parity, embed, classify, search, bench, build_engines, serve, triton_repo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ruclip-tiny", description="RuCLIP tiny: reference, export, runtime.")
    parser.add_argument("--version", action="version", version=f"ruclip-tiny {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for command in COMMANDS:
        command.register(commands)
    return parser


EXTRA_OF_MODULE = {
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
    extra = EXTRA_OF_MODULE.get(module)
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

