"""Zero-shot label templates (``"фото: {}"``): checked before anything is formatted, filled without ``str.format``.

A template holds exactly one ``{}`` where the label goes, with no format spec, conversion, index or name, and any
other brace doubled (``{{`` / ``}}``). Format specs are refused because they let a few bytes ask for gigabytes
(``"{:>20000000}"`` pads every label to 20 million characters); the length of each filled text is known before it
is built, so a length limit holds without building it. Torch-free: the server, ``Embedder.classify``, the reference
zero-shot code and the CLI all use this one check.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

from ruclip_tiny.errors import RuclipTinyError

_HOW = 'put "{}" once where the label goes (e.g. "фото: {}") and double any other brace ("{{" or "}}")'


class TemplateError(RuclipTinyError, ValueError):
    """A label template that is not one plain ``{}`` in literal text, or a filled label over a length limit."""


@dataclass(frozen=True)
class Template:
    """A checked template: the literal text before and after its one ``{}`` (braces already un-doubled)."""

    prefix: str
    suffix: str

    def filled_length(self, label: str) -> int:
        return len(self.prefix) + len(label) + len(self.suffix)

    def fill(self, label: str) -> str:
        return f"{self.prefix}{label}{self.suffix}"


def parse_template(template: str) -> Template:
    """The prefix and suffix of ``template``; TemplateError (naming the template and the fix) unless it holds
    exactly one ``{}`` and nothing else to format."""
    if not isinstance(template, str):
        raise TemplateError(f"template must be a string, got {type(template).__name__}; {_HOW}")
    shown = template if len(template) <= 80 else template[:77] + "..."
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as err:  # a single "{" or "}"
        raise TemplateError(f"template {shown!r}: {err}; {_HOW}") from None
    literals, fields = [], []
    for literal, name, spec, conversion in pieces:
        literals.append(literal)
        if name is not None:
            fields.append((name, spec, conversion))
    if len(fields) != 1:
        what = "no {} for the label" if not fields else f"{len(fields)} replacement fields, not one"
        raise TemplateError(f"template {shown!r} has {what}; {_HOW}")
    name, spec, conversion = fields[0]
    if name or spec or conversion:
        raise TemplateError(
            f"template {shown!r}: the label's field must be a plain {{}}, without an index, name, conversion or "
            f"format spec; {_HOW}"
        )
    split = next(index for index, (_, name, _, _) in enumerate(pieces) if name is not None)
    return Template("".join(literals[: split + 1]), "".join(literals[split + 1 :]))


def fill_template(
    template: str, labels: Sequence[str], max_chars: int | None = None, limit_name: str = "max_chars"
) -> list[str]:
    """``template`` filled with each label, in order.

    max_chars: refuse (TemplateError naming ``limit_name`` and the label's index) a filled text longer than this,
    checked before the text is built. Raises TemplateError for a template ``parse_template`` refuses.
    """
    parsed = parse_template(template)
    if max_chars is not None:
        for index, label in enumerate(labels):
            length = parsed.filled_length(label)
            if length > max_chars:
                raise TemplateError(
                    f"labels[{index}] with the template: {length} characters, more than {limit_name}={max_chars}; "
                    "shorten the label or the template"
                )
    return [parsed.fill(label) for label in labels]
