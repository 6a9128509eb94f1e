"""What an embedding job reads: image files from ``--images`` arguments, texts from a file (one per line, blank lines
skipped, ids the line numbers), and the list of source files whose paths, sizes and times identify a job."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .store import CollectionError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def image_paths(arguments: Sequence[str]) -> list[Path]:
    """Expand ``--images`` arguments: a directory is walked recursively (sorted, image suffixes only), a glob is
    expanded (sorted), a file is taken as given. An argument that matches nothing is an error naming it."""
    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found = [path]
        elif glob.has_magic(argument):
            found = sorted(Path(p) for p in glob.glob(argument, recursive=True) if Path(p).is_file())
        else:
            raise CollectionError(f"--images {argument}: no such file or directory")
        if not found:
            raise CollectionError(f"--images {argument}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) there")
        paths.extend(found)
    return paths


def text_lines(path: str | os.PathLike, option: str = "--texts") -> list[str]:
    r"""The texts of a UTF-8 file, one per line (line i is text id i, 1-based); an empty line is an empty text.

    Lines end at ``\n`` or ``\r\n`` only, as an editor or ``wc -l`` counts them: ``str.splitlines`` would also
    split inside a line at U+2028, U+2029, ``\x0b``, ``\x0c``, ``\x1c``-``\x1e`` and ``\x85``, and shift
    every id after it. A final line without ``\n`` is a line; a file ending in ``\n`` has no extra empty line.
    ``option`` names the file in errors (``--texts``, ``--labels-file``).
    """
    try:
        with open(path, encoding="utf-8", newline="") as handle:  # newline="": no translation of lone "\r"
            text = handle.read()
    except FileNotFoundError:
        raise CollectionError(f"{option} {path}: no such file") from None
    except OSError as exc:  # a directory, no permission
        raise CollectionError(f"{option} {path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise CollectionError(f"{option} {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


@dataclass(frozen=True)
class JobInputs:
    """The items of one embedding job. kind: "images" or "texts"; ids: the id of each item (the path, or the
    1-based line number); items: what is embedded (paths, or texts); sources: the files whose paths, sizes and
    modification times identify the input (each image, or the text file); blank_lines: blank lines skipped."""

    kind: str
    ids: list[str]
    items: list
    sources: list[Path]
    blank_lines: int = 0

    def __len__(self) -> int:
        return len(self.items)


def image_inputs(paths: Sequence[str | os.PathLike]) -> JobInputs:
    paths = [Path(p) for p in paths]
    return JobInputs("images", [str(p) for p in paths], paths, paths)


def text_inputs(path: str | os.PathLike, option: str = "--texts") -> JobInputs:
    """The non-blank lines of a text file; a blank line (empty or only spaces) is skipped and counted, and the
    other lines keep their line numbers as ids."""
    lines = text_lines(path, option)
    kept = [(str(number), line) for number, line in enumerate(lines, 1) if line.strip()]
    return JobInputs("texts", [i for i, _ in kept], [t for _, t in kept], [Path(path)], len(lines) - len(kept))
