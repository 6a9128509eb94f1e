"""Unicode tables of the runtime tokenizer: what Python's ``unicodedata`` (the original's) and the Rust
``tokenizers`` tables say about each code point, and the rewrite that makes ``tokenizers`` agree with Python.

The tables are derived at first use by probing ``tokenizers`` itself (``rust_mismatches``), so they stay right for
whatever ``tokenizers`` and Python versions are installed.
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from tokenizers import normalizers, pre_tokenizers

from ruclip_tiny.errors import TokenizerError

# BERT's "Chinese character" blocks (CJK ideographs), exactly as the original's _is_chinese_char lists them.
CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)
# Where renamed characters go: planes 4-13 are unassigned in every Unicode version so far, so the Python pass removes
# them from every text while the Rust tables see ordinary letters there (both checked at first use).
_RENAME_TARGETS = range(0x40000, 0x40000 + 4096)


class CodePoints:
    """A set of code points, as ranges, that texts are searched for and cleaned of, fast.

    A regex class over ranges above U+FFFF is scanned range by range for every character (about a microsecond per
    character for the control set); over the BMP alone it becomes a bitmap. So the BMP part is a regex, and the rare
    astral characters of a text are looked up by bisection.
    """

    def __init__(self, ranges: list[tuple[int, int]]):
        self.ranges = ranges
        self._bmp = _char_class([(a, min(b, 0xFFFF)) for a, b in ranges if a <= 0xFFFF])
        astral = [(max(a, 0x10000), b) for a, b in ranges if b > 0xFFFF]
        self._starts = [a for a, _ in astral]
        self._ends = [b for _, b in astral]

    def _has_astral(self, char: str) -> bool:
        i = bisect.bisect_right(self._starts, ord(char)) - 1
        return i >= 0 and ord(char) <= self._ends[i]

    def search(self, text: str) -> bool:
        """Whether the text holds any of the code points."""
        if self._bmp.search(text):
            return True
        return bool(self._starts) and _ASTRAL.search(text) is not None and any(
            self._has_astral(c) for c in text if c > "\uffff"
        )

    def remove(self, text: str) -> str:
        """The text without any of the code points."""
        text = self._bmp.sub("", text)
        if self._starts and _ASTRAL.search(text):
            text = "".join(c for c in text if c <= "\uffff" or not self._has_astral(c))
        return text


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class PythonTables:
    control: CodePoints  # the original's _clean_text drops these
    marks: CodePoints  # category Mn: accent stripping drops these after NFD
    separators: re.Pattern  # what splits words before the original's never_split check (captured)
    separators_with_cjk: re.Pattern
    kept: np.ndarray  # int64 [K]: every code point the original does not drop
    punctuation: frozenset[int]  # kept code points the original's _is_punctuation accepts
    spaces: frozenset[int]  # kept code points that separate words (str.isspace)


def code_point_ranges(codepoints: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted code points as inclusive (first, last) runs."""
    cps = np.asarray(list(codepoints) if not isinstance(codepoints, np.ndarray) else codepoints, dtype=np.int64)
    if cps.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(cps) != 1)
    starts = np.concatenate([[cps[0]], cps[breaks + 1]])
    ends = np.concatenate([cps[breaks], [cps[-1]]])
    return list(zip(starts.tolist(), ends.tolist()))


def _char_class(ranges: list[tuple[int, int]]) -> re.Pattern:
    """A regex matching one character of any of the ranges."""
    if not ranges:
        return re.compile("(?!)")
    body = "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)
    return re.compile(f"[{body}]")


@functools.cache
def python_tables() -> PythonTables:
    """Python's unicodedata classes of every code point, scanned once per process (about 0.2 s)."""
    codes = "".join(map(unicodedata.category, map(chr, range(0x110000)))).encode("ascii")
    categories = np.frombuffer(codes, dtype=np.uint8).reshape(-1, 2)
    major, minor = categories[:, 0], categories[:, 1]
    codepoints = np.arange(0x110000)
    # The original's _is_control: every category C*, but tab, newline and carriage return; _clean_text also drops
    # NUL (a Cc) and U+FFFD.
    control = major == ord("C")
    control[[9, 10, 13]] = False
    control[0xFFFD] = True
    ascii_punctuation = (
        ((codepoints >= 33) & (codepoints <= 47)) | ((codepoints >= 58) & (codepoints <= 64))
        | ((codepoints >= 91) & (codepoints <= 96)) | ((codepoints >= 123) & (codepoints <= 126))
    )
    punctuation = ~control & (ascii_punctuation | (major == ord("P")))
    kept = np.flatnonzero(~control)
    spaces = [cp for cp in kept.tolist() if chr(cp).isspace()]
    cjk = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in CJK_RANGES)
    return PythonTables(
        control=CodePoints(code_point_ranges(np.flatnonzero(control))),
        marks=CodePoints(code_point_ranges(np.flatnonzero((major == ord("M")) & (minor == ord("n"))))),
        separators=re.compile(r"(\s+)"),
        separators_with_cjk=re.compile(rf"(\s+|[{cjk}])"),
        kept=kept,
        punctuation=frozenset(np.flatnonzero(punctuation).tolist()),
        spaces=frozenset(spaces),
    )


@functools.cache
def rust_mismatches(chinese: bool) -> dict[int, tuple[str, str]]:
    """Code points the original keeps on which ``tokenizers`` disagrees: cp -> (python class, rust class).

    Classes: "space" (separates words), "split" (a word of its own: punctuation, CJK ideographs when ``chinese``),
    "word" (part of a word), and for Rust also "drop" and "changed:<output>". Found by running every kept code point
    through the very normalizer and pre-tokenizer the runtime uses (about 0.1 s).
    """
    python = python_tables()
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=chinese, strip_accents=False, lowercase=False
    )
    rust: dict[int, str] = {}
    letters: list[str] = []
    kept = python.kept.tolist()
    for separator, probed in (("|", [cp for cp in kept if cp != ord("|")]), ("#", [ord("|")])):
        chars = list(map(chr, probed))
        outputs = normalizer.normalize_str(separator.join(chars) + separator).split(separator)
        for char, out in zip(chars, outputs):
            if out == " ":
                rust[ord(char)] = "space"
            elif out == char:
                letters.append(char)
            elif out == "":
                rust[ord(char)] = "drop"
            else:
                rust[ord(char)] = "split" if out == f" {char} " else f"changed:{out}"
    # Punctuation: pre-tokenize "a" + c + "a" + d + "a" ...; every character split off comes back alone.
    for piece, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str("a" + "a".join(letters) + "a"):
        if len(piece) == 1 and piece != "a":
            rust[ord(piece)] = "split"

    python_split = set(python.punctuation)
    if chinese:
        in_cjk = np.zeros(len(python.kept), dtype=bool)
        for a, b in CJK_RANGES:
            in_cjk |= (python.kept >= a) & (python.kept <= b)
        python_split.update(python.kept[in_cjk].tolist())
    rust_split = {cp for cp, kind in rust.items() if kind == "split"}
    rust_space = {cp for cp, kind in rust.items() if kind == "space"}
    suspects = (python_split ^ rust_split) | (python.spaces ^ rust_space) | (rust.keys() - rust_split - rust_space)
    mismatches = {}
    for cp in suspects:
        py = "space" if cp in python.spaces else "split" if cp in python_split else "word"
        if rust.get(cp, "word") != py:
            mismatches[cp] = (py, rust.get(cp, "word"))
    return mismatches


@functools.cache
def _rename_targets() -> tuple[int, ...]:
    """The rename targets that Python reports as unassigned and the Rust tables take for letters."""
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
    )
    targets = [cp for cp in _RENAME_TARGETS
               if unicodedata.category(chr(cp)) == "Cn" and normalizer.normalize_str(chr(cp)) == chr(cp)]
    words = pre_tokenizers.BertPreTokenizer().pre_tokenize_str("a" + "a".join(map(chr, targets)) + "a")
    split = {ord(piece) for piece, _ in words if len(piece) == 1 and piece != "a"}
    return tuple(cp for cp in targets if cp not in split)


def rewrite_table(mismatches: dict[int, tuple[str, str]], vocab: dict[str, int]):
    """(str.translate table for texts, renames for the WordPiece vocabulary) that make Rust agree with Python."""
    table: dict[int, str] = {}
    renames: dict[int, str] = {}
    # Where Rust would split a word Python keeps whole, or lose a character Python keeps, Rust gets a letter instead.
    needs_rename = [cp for cp, (python, rust) in mismatches.items()
                    if (python == "word" and rust != "word") or (python == "split" and rust not in ("split", "word"))]
    if needs_rename:
        used = {ord(c) for token in vocab for c in token}
        free = (cp for cp in _rename_targets() if cp not in used)
        for cp in needs_rename:
            target = next(free, None)
            if target is None:
                raise TokenizerError("no free code point to rename a Unicode-table mismatch to; this vocabulary uses "
                                     "all of U+40000..U+40FFF")
            renames[cp] = chr(target)
    for cp, (python, _) in mismatches.items():
        if python == "space":
            table[cp] = " "
        elif python == "split":
            table[cp] = f" {renames.get(cp, chr(cp))} "
        else:
            table[cp] = renames[cp]
    return table, renames
