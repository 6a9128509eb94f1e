"""The typed results of a parity run — an entry per artifact or combined row, and the report holding them — each
with its one ``to_json``/``from_json``: the layout of ``parity/report.json`` and of ``manifest["parity"]``.

``parity/report.json``: schema_version, bundle, date (ISO 8601, UTC), backend ("onnxruntime" or another),
onnxruntime_version, providers (as requested, with options), backend_options, precisions (those run), skipped
{precision: why the backend cannot run it here}, probe {images, texts}, thresholds {precision: Thresholds fields},
passed (every entry passed), written {report, manifest, plot, plot_skipped} (null with ``--no-write``),
results {key: entry} for keys ``visual.fp32``, ``textual.fp32``, ``combined.fp32``, … .

An entry, stored as it is in ``manifest["parity"][key]`` too:
    kind "artifact" | "combined"; artifact (its key); encoder (artifacts) or artifacts (combined: the two keys);
    precision; file, sha256 (artifacts: the manifest's path and sha256 of what was run, when it lists them);
    backend, onnxruntime_version, provider (the provider the session really used), device and backend_description
    (backends other than onnxruntime), date, probe, thresholds; passed; failures [one sentence per broken bar];
    error (why it could not be judged at all, else null); and once it ran: rows, min_cosine, mean_cosine,
    max_abs_error, mean_reference_norm (artifacts only), max_rel_error, max_elementwise_rel_error, nan, inf,
    max_similarity_change, top1 {image_to_text, text_to_image: {rows, clear, agree, flipped [row indices]}}.
NaN/Inf metric values are written as null (the nan/inf counts keep the fact) and read back as NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from runtime.parity.thresholds import ParityError, Thresholds

REPORT_SCHEMA_VERSION = 1
KINDS = ("artifact", "combined")
DIRECTIONS = ("image_to_text", "text_to_image")


def json_safe(value):
    """NaN/Inf become null (JSON has no NaN; the nan/inf counts keep the fact); dicts, lists and tuples are walked."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


# --- reading JSON: the one place where a field's type is checked and an absent optional field becomes None ----------


def _field(data: dict, name: str, kind: type | tuple[type, ...], where: str, optional: bool = False) -> Any:
    if not isinstance(data, dict):
        raise ParityError(f"{where}: expected an object, got {type(data).__name__}")
    if name not in data or (optional and data[name] is None):
        if optional:
            return None
        raise ParityError(f"{where}: {name} is missing")
    kinds = kind if isinstance(kind, tuple) else (kind,)
    value = data[name]
    # bool is an int to Python, but never a count or a measurement here
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ParityError(f"{where}: {name} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    return value


def _number(data: dict, name: str, where: str, optional: bool = False) -> float | None:
    """A measurement: null (how NaN and Inf are written) reads back as NaN, unless the field is optional."""
    if name in data and data[name] is None and not optional:
        return math.nan
    value = _field(data, name, (int, float), where, optional)
    return None if value is None else float(value)


def _strings(data: dict, name: str, where: str, optional: bool = False) -> list[str] | None:
    values = _field(data, name, list, where, optional)
    if values is not None and not all(isinstance(value, str) for value in values):
        raise ParityError(f"{where}: {name} must be a list of strings, got {values!r}")
    return values


# --- the types ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeSize:
    """How many images and texts the probe holds."""

    images: int
    texts: int

    def to_json(self) -> dict:
        return {"images": self.images, "texts": self.texts}

    @classmethod
    def from_json(cls, data: dict, where: str = "probe") -> ProbeSize:
        return cls(_field(data, "images", int, where), _field(data, "texts", int, where))


@dataclass(frozen=True)
class Top1:
    """Zero-shot top-1 agreement along one direction: rows, the clear-margin rows that count, those that agree, and
    the indices of clear rows whose top-1 changed."""

    rows: int
    clear: int
    agree: int
    flipped: list[int]

    def to_json(self) -> dict:
        return {"rows": self.rows, "clear": self.clear, "agree": self.agree, "flipped": list(self.flipped)}

    @classmethod
    def from_json(cls, data: dict, where: str = "top1") -> Top1:
        flipped = _field(data, "flipped", list, where)
        if not all(isinstance(row, int) and not isinstance(row, bool) for row in flipped):
            raise ParityError(f"{where}: flipped must be a list of row indices, got {flipped!r}")
        return cls(_field(data, "rows", int, where), _field(data, "clear", int, where),
                   _field(data, "agree", int, where), list(flipped))


@dataclass(frozen=True)
class EntryMetrics:
    """What was measured once an encoder (or a pair) ran: see ``runtime.parity.metrics``. Floats may be NaN."""

    rows: int
    min_cosine: float
    mean_cosine: float
    max_abs_error: float
    max_rel_error: float
    max_elementwise_rel_error: float
    nan: int
    inf: int
    max_similarity_change: float
    top1: dict[str, Top1]
    mean_reference_norm: float | None = None  # artifacts only: the scale of the abs-error bar

    FLOATS = ("min_cosine", "mean_cosine", "max_abs_error", "max_rel_error", "max_elementwise_rel_error",
              "max_similarity_change")

    @classmethod
    def from_metrics(cls, metrics: dict) -> EntryMetrics:
        """From the dicts ``feature_metrics`` and ``similarity_metrics`` return (merged)."""
        return cls.from_json(metrics, "metrics")

    def to_json(self) -> dict:
        """Plain metric names, as the metric functions give them; NaN and Inf written as null."""
        data: dict = {"rows": self.rows}
        data.update({name: getattr(self, name) for name in self.FLOATS})
        if self.mean_reference_norm is not None:
            data["mean_reference_norm"] = self.mean_reference_norm
        data.update(nan=self.nan, inf=self.inf, top1={d: self.top1[d].to_json() for d in DIRECTIONS})
        return json_safe(data)

    @classmethod
    def from_json(cls, data: dict, where: str = "entry") -> EntryMetrics:
        top1 = _field(data, "top1", dict, where)
        return cls(
            rows=_field(data, "rows", int, where),
            **{name: _number(data, name, where) for name in cls.FLOATS},
            nan=_field(data, "nan", int, where),
            inf=_field(data, "inf", int, where),
            top1={d: Top1.from_json(_field(top1, d, dict, f"{where}.top1"), f"{where}.top1.{d}") for d in DIRECTIONS},
            mean_reference_norm=_number(data, "mean_reference_norm", where, optional=True),
        )


@dataclass(frozen=True)
class ParityEntry:
    """The verdict on one artifact (``kind`` "artifact": one encoder) or one pair (``kind`` "combined")."""

    kind: str
    artifact: str
    precision: str
    backend: str
    onnxruntime_version: str
    date: str
    probe: ProbeSize
    thresholds: Thresholds
    passed: bool
    failures: list[str]
    error: str | None = None  # why it could not be judged at all
    provider: str | None = None  # the ONNX Runtime provider the session really used
    encoder: str | None = None  # artifacts
    artifacts: list[str] | None = None  # combined: the visual and the textual key
    file: str | None = None
    sha256: str | None = None
    device: str | None = None  # backends other than onnxruntime
    backend_description: str | None = None
    metrics: EntryMetrics | None = None  # None when it did not run

    OPTIONAL_TEXT = ("encoder", "file", "sha256", "device", "backend_description")

    @property
    def runs_on(self) -> str:
        """Where it ran, in words: the provider, else the backend's own description, else its name."""
        return self.provider or self.backend_description or self.backend

    def to_json(self) -> dict:
        data: dict = {"kind": self.kind, "artifact": self.artifact}
        if self.encoder is not None:
            data["encoder"] = self.encoder
        if self.artifacts is not None:
            data["artifacts"] = list(self.artifacts)
        data.update(precision=self.precision)
        data.update({name: getattr(self, name) for name in ("file", "sha256") if getattr(self, name) is not None})
        data.update(backend=self.backend, onnxruntime_version=self.onnxruntime_version, provider=self.provider)
        data.update({name: getattr(self, name) for name in ("device", "backend_description")
                     if getattr(self, name) is not None})
        data.update(date=self.date, probe=self.probe.to_json(), thresholds=self.thresholds.to_json())
        if self.metrics is not None:
            data.update(self.metrics.to_json())
        data.update(passed=self.passed, error=self.error, failures=list(self.failures))
        return data

    @classmethod
    def from_json(cls, data: dict, where: str = "parity entry") -> ParityEntry:
        kind = _field(data, "kind", str, where)
        if kind not in KINDS:
            raise ParityError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        return cls(
            kind=kind,
            artifact=_field(data, "artifact", str, where),
            precision=_field(data, "precision", str, where),
            backend=_field(data, "backend", str, where),
            onnxruntime_version=_field(data, "onnxruntime_version", str, where),
            date=_field(data, "date", str, where),
            probe=ProbeSize.from_json(_field(data, "probe", dict, where), f"{where}.probe"),
            thresholds=Thresholds.from_json(_field(data, "thresholds", dict, where), f"{where}.thresholds"),
            passed=_field(data, "passed", bool, where),
            failures=_strings(data, "failures", where),
            error=_field(data, "error", str, where, optional=True),
            provider=_field(data, "provider", str, where, optional=True),
            artifacts=_strings(data, "artifacts", where, optional=True),
            metrics=EntryMetrics.from_json(data, where) if "rows" in data else None,
            **{name: _field(data, name, str, where, optional=True) for name in cls.OPTIONAL_TEXT},
        )


@dataclass(frozen=True)
class Written:
    """What a run wrote where, relative to the bundle; ``plot`` is None when it was skipped (``plot_skipped``:
    why)."""

    report: str
    manifest: str
    plot: str | None
    plot_skipped: str | None = None

    def to_json(self) -> dict:
        return {"report": self.report, "manifest": self.manifest, "plot": self.plot, "plot_skipped": self.plot_skipped}

    @classmethod
    def from_json(cls, data: dict, where: str = "written") -> Written:
        return cls(
            _field(data, "report", str, where),
            _field(data, "manifest", str, where),
            _field(data, "plot", str, where, optional=True),
            _field(data, "plot_skipped", str, where, optional=True),
        )


@dataclass
class ParityReport:
    """One parity run: what ran, on what, against which bars, every entry, and what was written (None: nothing)."""

    bundle: str
    date: str
    backend: str
    onnxruntime_version: str
    providers: list  # as requested: a name, or [name, {options}]
    backend_options: dict
    precisions: list[str]  # those run
    skipped: dict[str, str]  # precision -> why the backend cannot run it here
    probe: ProbeSize
    thresholds: dict[str, Thresholds]
    results: dict[str, ParityEntry]
    written: Written | None = None
    schema_version: int = REPORT_SCHEMA_VERSION

    @property
    def passed(self) -> bool:
        """Something was judged, and every entry passed."""
        return bool(self.results) and all(entry.passed for entry in self.results.values())

    @property
    def failed(self) -> list[str]:
        """The keys of the entries that did not pass."""
        return [key for key, entry in self.results.items() if not entry.passed]

    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "bundle": self.bundle,
            "date": self.date,
            "backend": self.backend,
            "onnxruntime_version": self.onnxruntime_version,
            "providers": json_safe(self.providers),
            "backend_options": json_safe(self.backend_options),
            "precisions": list(self.precisions),
            "skipped": dict(self.skipped),
            "probe": self.probe.to_json(),
            "thresholds": {precision: bars.to_json() for precision, bars in self.thresholds.items()},
            "results": {key: entry.to_json() for key, entry in self.results.items()},
            "passed": self.passed,
            "written": None if self.written is None else self.written.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict, where: str = "parity report") -> ParityReport:
        version = _field(data, "schema_version", int, where)
        if version != REPORT_SCHEMA_VERSION:
            raise ParityError(f"{where}: schema_version {version} is not one this code reads ({REPORT_SCHEMA_VERSION})")
        skipped = _field(data, "skipped", dict, where)
        if not all(isinstance(why, str) for why in skipped.values()):
            raise ParityError(f"{where}: skipped must map precisions to reasons, got {skipped!r}")
        thresholds = _field(data, "thresholds", dict, where)
        results = _field(data, "results", dict, where)
        written = _field(data, "written", dict, where, optional=True)
        return cls(
            bundle=_field(data, "bundle", str, where),
            date=_field(data, "date", str, where),
            backend=_field(data, "backend", str, where),
            onnxruntime_version=_field(data, "onnxruntime_version", str, where),
            providers=_field(data, "providers", list, where),
            backend_options=_field(data, "backend_options", dict, where),
            precisions=_strings(data, "precisions", where),
            skipped=dict(skipped),
            probe=ProbeSize.from_json(_field(data, "probe", dict, where), f"{where}.probe"),
            thresholds={p: Thresholds.from_json(bars, f"{where}.thresholds.{p}") for p, bars in thresholds.items()},
            results={key: ParityEntry.from_json(entry, f"{where}.results.{key}") for key, entry in results.items()},
            written=None if written is None else Written.from_json(written, f"{where}.written"),
            schema_version=version,
        )
