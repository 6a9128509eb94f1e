"""Typed reads of a manifest's JSON values, each refusal naming the field and the bundle; paths kept inside the bundle.

The primitives ``runtime.manifest`` builds its dataclasses with; torch-free.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import NoReturn

from ruclip_tiny.errors import RuclipTinyError

MANIFEST = "manifest.json"


class BundleError(RuclipTinyError):
    """A directory that is not a usable bundle, or whose files do not match its manifest."""


class NotDeployableError(BundleError):
    """An artifact whose last parity run did not pass (or never ran), asked for without ``allow_not_deployable``."""


def contained_path(root: Path, relative: object, what: str) -> Path:
    """``root / relative`` when it resolves (symlinks followed) inside ``root``; else BundleError naming ``what``.

    A bundle may come from elsewhere: a manifest naming ``/etc/passwd``, ``../x`` or a symlink out of the bundle must
    not make any command read (or report the size of) a file outside it.
    """
    if not isinstance(relative, str) or not relative:
        raise BundleError(f"{what}: the path must be a non-empty string, got {shown(relative)} ({root})")
    candidate = Path(relative)
    if candidate.is_absolute():
        raise BundleError(
            f"{what}: {relative!r} is an absolute path; a bundle names its files relative to its root {root} — "
            "re-export the bundle"
        )
    try:
        resolved = (root / candidate).resolve()
        base = root.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
        raise BundleError(f"{what}: {relative!r} cannot be resolved inside {root} ({exc})") from None
    if not resolved.is_relative_to(base):
        raise BundleError(
            f"{what}: {relative!r} leads outside the bundle {root} (to {resolved}, through '..' or a symlink); every "
            "file a manifest names must lie inside its bundle — re-export the bundle"
        )
    return root / candidate


# --- reading JSON values, each error naming the field and the bundle ------------------------------------------------

SHA256 = re.compile(r"[0-9a-f]{64}")


def shown(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, (str, int, float, list, dict)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def member(parent: str, key: object) -> str:
    """``artifacts["visual.fp32"]``, ``tokenizer.files[0]``: how an error names a field."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if isinstance(key, str) and key.isidentifier():
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{json.dumps(key, ensure_ascii=False)}]"


class FieldReader:
    """Typed reads of one manifest's JSON values; each refusal names the field and the bundle."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def fail(self, where: str, problem: str) -> NoReturn:
        raise BundleError(
            f"{self.root / MANIFEST}: {where} {problem}; the manifest is damaged or was edited — re-export the "
            f"bundle (ruclip-tiny export --out {self.root} --force)"
        )

    def mapping(self, value, where: str) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"must be an object, got {shown(value)}")
        return value

    def sequence(self, value, where: str) -> list:
        if not isinstance(value, list):
            self.fail(where, f"must be a list, got {shown(value)}")
        return value

    def text(self, value, where: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(where, f"must be a non-empty string, got {shown(value)}")
        return value

    def flag(self, value, where: str) -> bool:
        if not isinstance(value, bool):
            self.fail(where, f"must be true or false, got {shown(value)}")
        return value

    def count(self, value, where: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(where, f"must be an integer >= {minimum}, got {shown(value)}")
        return value

    def number(self, value, where: str, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(where, f"must be a finite number{' above 0' if positive else ''}, got {shown(value)}")
        if positive and value <= 0:
            self.fail(where, f"must be a finite number above 0, got {shown(value)}")
        return float(value)

    def path(self, value, where: str) -> str:
        self.text(value, where)
        contained_path(self.root, value, f"{self.root / MANIFEST}: {where}")
        return value

    def required(self, container: dict, key: str, where: str, what: str):
        if key not in container:
            self.fail(where, f"has no {key!r} ({what})")
        return container[key]

    @staticmethod
    def at(container: dict, key: str):
        """``container[key]``; a missing field reads as null, which the type check that follows refuses."""
        return container[key] if key in container else None

    def maybe(self, container: dict, key: str, read, where: str, *args):
        """Like ``optional``, for a field that may also be null (a real checkpoint's seed, a synthetic one's sha256)."""
        return None if self.at(container, key) is None else read(container[key], member(where, key), *args)

    def optional(self, container: dict, key: str, read, where: str, *args):
        """``read(container[key], field, *args)``, or None when the key is absent (null counts as a value)."""
        return read(container[key], member(where, key), *args) if key in container else None


def rest(data: dict, typed: tuple[str, ...]) -> dict:
    """The fields this version does not type, kept as written so a rewrite loses nothing."""
    return {key: value for key, value in data.items() if key not in typed}


def without_none(data: dict) -> dict:
    return {key: value for key, value in data.items() if value is not None}
