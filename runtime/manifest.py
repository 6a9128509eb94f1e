"""The bundle's manifest as typed data: one reader (``Manifest.from_json``: every field's type, required fields,
paths inside the bundle, schema 1 upgraded), one writer (``to_json``), one deployability rule, and the key layout.

Deployability: a graph or an engine is deployable only when its last parity run passed (``deployable: true``); a
missing verdict means not deployable, everywhere. The reference weights have no verdict and are not gated.
Torch-free, like every reader of a bundle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ruclip_tiny import spec
from ruclip_tiny.fileio import file_sha256
from runtime.manifest_fields import (
    MANIFEST,
    SHA256,
    BundleError,
    FieldReader,
    NotDeployableError,
    contained_path,
    member,
    rest,
    shown,
    without_none,
)

__all__ = [  # the layout and errors are part of this module's interface, wherever they are defined
    "MANIFEST", "BundleError", "NotDeployableError", "contained_path",
]

SCHEMA_VERSION = 2
# Schema 1 (bundles written before the typed manifest) has the same keys and nesting; it is upgraded on reading.
READABLE_SCHEMA_VERSIONS = (1, 2)

TOKENIZER_DIR = "tokenizer"
REFERENCE_KEY = "reference"
WEIGHTS_FORMAT = "safetensors"
ONNX_FORMAT = "onnx"
ENGINE_FORMAT = "tensorrt"
ENGINES_DIR = "engines"
TIMING_CACHE = "timing.cache"
_FORMAT_OF_SUFFIX = {".onnx": ONNX_FORMAT, ".plan": ENGINE_FORMAT, ".safetensors": WEIGHTS_FORMAT}


# --- keys and paths -------------------------------------------------------------------------------------------------


def artifact_key(encoder: str, precision: str) -> str:
    """Manifest key of an encoder graph, e.g. ``visual.fp16``."""
    return f"{encoder}.{precision}"


def fused_key(encoder: str, precision: str) -> str:
    """Manifest key of an encoder graph with ONNX Runtime's fused kernels, e.g. ``textual.fp32.fused``."""
    return f"{artifact_key(encoder, precision)}.fused"


def onnx_file(encoder: str, precision: str) -> str:
    """File name of an encoder graph: ``visual.onnx`` (fp32) or ``visual.fp16.onnx``."""
    return f"{encoder}.onnx" if precision == "fp32" else f"{encoder}.{precision}.onnx"


def engine_dir_name(trt_version: str, compute_capability: str) -> str:
    """``10.13.3_sm90``: the directory of the engines one TensorRT version builds for one GPU architecture."""
    return f"{trt_version}_sm{compute_capability}"


def engine_key(encoder: str, precision: str, trt_version: str, compute_capability: str) -> str:
    """Manifest key of an engine: ``engines/<trt-version>_sm<cc>/<encoder>.<precision>``."""
    return f"{ENGINES_DIR}/{engine_dir_name(trt_version, compute_capability)}/{encoder}.{precision}"


def engine_path(encoder: str, precision: str, trt_version: str, compute_capability: str) -> str:
    """Bundle-relative file of an engine: its key plus ``.plan``."""
    return engine_key(encoder, precision, trt_version, compute_capability) + ".plan"


def timing_cache_path(trt_version: str, compute_capability: str) -> str:
    """Bundle-relative timing cache, beside the engines it sped up (it is as version- and GPU-bound as they are)."""
    return f"{ENGINES_DIR}/{engine_dir_name(trt_version, compute_capability)}/{TIMING_CACHE}"


def parse_engine_key(key: str) -> tuple[str, str, str, str] | None:
    """``(trt_version, compute_capability, encoder, precision)`` of an engine key, None for any other key."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != ENGINES_DIR or "_sm" not in parts[1]:
        return None
    version, _, capability = parts[1].rpartition("_sm")
    encoder, _, precision = parts[2].partition(".")
    if not (version and capability.isdigit() and encoder in spec.ENCODERS and precision):
        return None
    return version, capability, encoder, precision


# --- the typed entries ----------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class FileEntry:
    """A file the bundle vouches for: ``path`` (inside the bundle), ``size`` in bytes and ``sha256``."""

    path: str
    size: int
    sha256: str
    extra: dict = field(default_factory=dict)

    _TYPED = ("path", "size", "sha256")

    @classmethod
    def describe(cls, root: str | Path, relative: str, **fields) -> FileEntry:
        """The entry of the file ``root / relative`` as it is now (size and sha256 measured)."""
        path = Path(root) / relative
        return cls(path=relative, size=path.stat().st_size, sha256=file_sha256(path), **fields)

    @classmethod
    def _file_fields(cls, reader: FieldReader, value, where: str) -> tuple[dict, dict]:
        data = reader.mapping(value, where)
        for key in ("path", "size", "sha256"):
            reader.required(data, key, where, "a file entry needs path, size and sha256")
        sha256 = data["sha256"]
        if not isinstance(sha256, str) or not SHA256.fullmatch(sha256):
            reader.fail(member(where, "sha256"), f"must be 64 lowercase hex digits, got {shown(sha256)}")
        fields = {
            "path": reader.path(data["path"], member(where, "path")),
            "size": reader.count(data["size"], member(where, "size")),
            "sha256": sha256,
        }
        return data, fields

    @classmethod
    def read(cls, reader: FieldReader, value, where: str) -> FileEntry:
        data, fields = cls._file_fields(reader, value, where)
        return cls(**fields, extra=rest(data, cls._TYPED))

    def to_json(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, **self.extra}


@dataclass(frozen=True)
class TensorEntry:
    """One input or output of a graph or engine: name, numpy dtype, shape (ints fixed, names dynamic)."""

    name: str
    dtype: str
    shape: list

    @classmethod
    def read(cls, reader: FieldReader, value, where: str) -> TensorEntry:
        data = reader.mapping(value, where)
        name = reader.text(reader.at(data, "name"), member(where, "name"))
        dtype = reader.text(reader.at(data, "dtype"), member(where, "dtype"))
        shape = reader.sequence(reader.at(data, "shape"), member(where, "shape"))
        for axis, dim in enumerate(shape):
            if isinstance(dim, bool) or not isinstance(dim, (int, str)):
                reader.fail(member(member(where, "shape"), axis), f"must be an integer or a name, got {shown(dim)}")
        return cls(name, dtype, list(shape))

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def spec_io(encoder: str) -> tuple[list[TensorEntry], list[TensorEntry]]:
    """(inputs, outputs) of ``encoder`` as the manifest records them, from the one I/O description
    (``ruclip_tiny.spec``): what every graph and engine entry of that encoder says."""
    encoder_spec = spec.ENCODERS[encoder]
    return tuple(
        [TensorEntry(t.name, t.dtype, list(t.symbolic_shape)) for t in tensors]
        for tensors in (encoder_spec.inputs, encoder_spec.outputs)
    )


def spec_dims(encoder: str) -> dict:
    """The dynamic dimensions of ``encoder`` with their ranges, as graph and engine entries record them (``dims``)."""
    return {d.name: {"min": d.min, "max": d.max} for d in spec.ENCODERS[encoder].dims}


def _tensors(value, where: str, reader: FieldReader) -> list[TensorEntry]:
    return [TensorEntry.read(reader, item, member(where, i)) for i, item in enumerate(reader.sequence(value, where))]


@dataclass(kw_only=True)
class Artifact(FileEntry):
    """A graph (``format`` "onnx"), an engine (``EngineArtifact``) or the reference weights ("safetensors").

    ``deployable``: the verdict of the artifact's last parity run — None for the reference weights, which have none.
    """

    format: str
    encoder: str | None = None
    precision: str | None = None
    deployable: bool | None = None
    fused_variant_of: str | None = None
    max_batch: int | None = None
    inputs: list[TensorEntry] | None = None
    outputs: list[TensorEntry] | None = None

    _TYPED = (*FileEntry._TYPED, "format", "encoder", "precision", "deployable", "fused_variant_of", "max_batch",
              "inputs", "outputs")

    @property
    def gated(self) -> bool:
        """Whether loading it needs a passed parity verdict: graphs and engines do, the reference weights do not."""
        return self.format != WEIGHTS_FORMAT

    @property
    def usable(self) -> bool:
        """THE deployability rule: not gated, or its last parity run passed."""
        return not self.gated or self.deployable is True

    @classmethod
    def _artifact_fields(cls, reader: FieldReader, value, where: str) -> tuple[dict, dict]:
        data, fields = cls._file_fields(reader, value, where)
        fields["format"] = reader.text(reader.required(data, "format", where, "what kind of file it is"),
                                       member(where, "format"))
        for key in ("precision", "fused_variant_of"):
            fields[key] = reader.optional(data, key, reader.text, where)
        if "encoder" in data and data["encoder"] not in spec.ENCODERS:
            reader.fail(member(where, "encoder"),
                        f"must be one of {', '.join(spec.ENCODERS)}, got {shown(data['encoder'])}")
        fields["encoder"] = reader.at(data, "encoder")
        fields["max_batch"] = reader.optional(data, "max_batch", reader.count, where, 1)
        fields["inputs"] = reader.optional(data, "inputs", _tensors, where, reader)
        fields["outputs"] = reader.optional(data, "outputs", _tensors, where, reader)
        verdict = reader.optional(data, "deployable", reader.flag, where)
        # the one rule: a graph or engine without a verdict is not deployable
        fields["deployable"] = bool(verdict) if fields["format"] != WEIGHTS_FORMAT else verdict
        return data, fields

    @classmethod
    def read(cls, reader: FieldReader, value, where: str) -> Artifact:
        if isinstance(value, dict) and reader.at(value, "format") == ENGINE_FORMAT:
            return EngineArtifact.read(reader, value, where)
        data, fields = cls._artifact_fields(reader, value, where)
        return cls(**fields, extra=rest(data, cls._TYPED))

    def _typed_json(self) -> dict:
        return without_none({
            "format": self.format, "encoder": self.encoder, "precision": self.precision,
            "fused_variant_of": self.fused_variant_of, "max_batch": self.max_batch,
            "inputs": None if self.inputs is None else [t.to_json() for t in self.inputs],
            "outputs": None if self.outputs is None else [t.to_json() for t in self.outputs],
            "deployable": self.deployable,
        })

    def to_json(self) -> dict:
        return {**super().to_json(), **self._typed_json()}


@dataclass(frozen=True)
class EngineSource:
    """The graph an engine was built from: its manifest key, path and sha256 at build time."""

    artifact: str
    path: str
    sha256: str


@dataclass(kw_only=True)
class EngineArtifact(Artifact):
    """A TensorRT engine: runs only with ``tensorrt_version`` on GPUs of ``compute_capability`` (``"90"``), which
    its key names too (``engine_key``)."""

    format: str = ENGINE_FORMAT
    tensorrt_version: str | None = None
    compute_capability: str | None = None
    gpu_name: str | None = None
    source: EngineSource | None = None
    profiles: dict | None = None

    _TYPED = (*Artifact._TYPED, "tensorrt_version", "compute_capability", "gpu_name", "source", "profiles")

    @classmethod
    def read(cls, reader: FieldReader, value, where: str) -> EngineArtifact:
        data, fields = cls._artifact_fields(reader, value, where)
        for key in ("tensorrt_version", "compute_capability"):  # the key says them too (``parse_engine_key``)
            fields[key] = reader.optional(data, key, reader.text, where)
        fields["gpu_name"] = reader.maybe(data, "gpu_name", reader.text, where)
        if "source" in data:
            source = reader.mapping(data["source"], member(where, "source"))
            fields["source"] = EngineSource(
                *(reader.text(reader.at(source, key), member(member(where, "source"), key))
                  for key in ("artifact", "path", "sha256"))
            )
        fields["profiles"] = reader.optional(data, "profiles", reader.mapping, where)
        return cls(**fields, extra=rest(data, cls._TYPED))

    def to_json(self) -> dict:
        source = None if self.source is None else vars(self.source).copy()
        engine = without_none({"tensorrt_version": self.tensorrt_version, "compute_capability": self.compute_capability,
                                "gpu_name": self.gpu_name, "source": source, "profiles": self.profiles})
        return {**super().to_json(), **engine}


@dataclass(kw_only=True)
class Checkpoint:
    """Where the weights came from: ``source`` (file name, or the synthetic marker), ``seed``, ``sha256``.
    Whether they are synthetic is the manifest's one ``synthetic``."""

    source: str | None = None
    seed: int | None = None
    sha256: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self, synthetic: bool) -> dict:
        return {"source": self.source, "synthetic": synthetic, "seed": self.seed, "sha256": self.sha256, **self.extra}


@dataclass(kw_only=True)
class TokenizerEntry:
    """``path`` (the tokenizer directory) and the ``files`` the bundle vouches for; the rest as written."""

    path: str = TOKENIZER_DIR
    files: list[FileEntry] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"path": self.path, **self.extra, "files": [entry.to_json() for entry in self.files]}


@dataclass(kw_only=True)
class ProbeEntry:
    """The probe set: its ``files`` (inputs and reference outputs), how many ``images`` and ``texts``."""

    files: list[FileEntry] = field(default_factory=list)
    images: int | None = None
    texts: int | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self, logit_scale: float | None = None) -> dict:
        counts = without_none({"images": self.images, "texts": self.texts, "logit_scale": logit_scale})
        return {**self.extra, **counts, "files": [entry.to_json() for entry in self.files]}


@dataclass(kw_only=True)
class ParityRecord:
    """One artifact's last parity result: ``passed``, the ``failures`` that explain a fail; the metrics as written."""

    passed: bool | None = None
    failures: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_result(cls, entry: dict) -> ParityRecord:
        """The record of a parity result entry (a dict as the parity report writes it)."""
        return cls(passed=entry["passed"], failures=list(entry["failures"]), extra=rest(entry, ("passed", "failures")))

    def to_json(self) -> dict:
        return {**self.extra, **without_none({"passed": self.passed}), "failures": list(self.failures)}


def _file_list(value, where: str, reader: FieldReader) -> list[FileEntry]:
    return [FileEntry.read(reader, item, member(where, i)) for i, item in enumerate(reader.sequence(value, where))]


def _format_of(path: object) -> str | None:
    suffix = PurePosixPath(path).suffix if isinstance(path, str) else ""
    return _FORMAT_OF_SUFFIX[suffix] if suffix in _FORMAT_OF_SUFFIX else None


# --- the manifest ---------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Manifest:
    """What a bundle holds and how it was made. Keys and nesting are schema 1's; schema 2 adds ``ruclip_tiny_version``.

    ``model_id``: this model's id (``spec.MODEL_ID``) when the manifest names none;
    ``synthetic``: the weights are synthetic (the ONE marker: written at the top and in ``checkpoint``);
    ``logit_scale``: the zero-shot multiplier (the ONE value: written at the top and in ``probe``), None when absent.
    ``extra``: top-level fields this version does not type, kept as written.
    """

    artifacts: dict[str, Artifact]
    schema_version: int = SCHEMA_VERSION
    model_id: str = spec.MODEL_ID
    created: str | None = None
    ruclip_tiny_version: str | None = None
    synthetic: bool = False
    checkpoint: Checkpoint | None = None
    embedding_dim: int = spec.EMBED_DIM
    logit_scale: float | None = None
    logit_scale_log: float | None = None
    preprocessing: dict | None = None
    tokenizer: TokenizerEntry | None = None
    probe: ProbeEntry | None = None
    activations: str | None = None
    tools: dict | None = None
    export_seconds: dict | None = None
    parity: dict[str, ParityRecord] = field(default_factory=dict)
    tensorrt_timing_caches: dict[str, FileEntry] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    _TYPED = ("schema_version", "model_id", "created", "ruclip_tiny_version", "synthetic", "checkpoint",
              "embedding_dim", "logit_scale", "logit_scale_log", "preprocessing", "tokenizer", "artifacts", "probe",
              "activations", "tools", "export_seconds", "parity", "tensorrt_timing_caches")

    # --- reading ---

    @classmethod
    def from_json(cls, data: object, root: str | Path) -> Manifest:
        """The manifest of the bundle at ``root`` from its parsed JSON: a schema this version reads (1 is upgraded,
        see ``upgrade_v1``), every field of its type, a non-empty ``artifacts`` whose entries have ``path``,
        ``size``, ``sha256`` and ``format``, every named path inside ``root``. Otherwise BundleError naming the
        field (or the unknown schema version) and the bundle."""
        root = Path(root)
        version = data["schema_version"] if isinstance(data, dict) and "schema_version" in data else None
        if isinstance(version, bool) or version not in READABLE_SCHEMA_VERSIONS:
            raise BundleError(
                f"{root / MANIFEST} has schema version {shown(version)}; this ruclip-tiny reads schema versions "
                f"{' and '.join(map(str, READABLE_SCHEMA_VERSIONS))} — re-export the bundle with this version, or "
                "read it with the ruclip-tiny that wrote it"
            )
        if version == 1:
            data = upgrade_v1(data)
        return cls._read(FieldReader(root), data)

    @classmethod
    def _read(cls, reader: FieldReader, data: dict) -> Manifest:
        if "artifacts" not in data:
            reader.fail("artifacts", "is missing")
        artifacts = reader.mapping(data["artifacts"], "artifacts")
        if not artifacts:
            reader.fail("artifacts", "is empty: the bundle lists no graph to run")
        fields = {
            "artifacts": {k: Artifact.read(reader, entry, member("artifacts", k)) for k, entry in artifacts.items()},
            "schema_version": SCHEMA_VERSION,
            "extra": rest(data, cls._TYPED),
        }
        for key in ("created", "ruclip_tiny_version"):
            fields[key] = reader.optional(data, key, reader.text, "")
        fields["model_id"] = reader.optional(data, "model_id", reader.text, "") or spec.MODEL_ID
        if "embedding_dim" in data:
            dim = reader.count(data["embedding_dim"], "embedding_dim", 1)
            if dim != spec.EMBED_DIM:
                reader.fail("embedding_dim", f"is {dim}, but this model's embeddings have {spec.EMBED_DIM} dimensions")
        fields["logit_scale_log"] = reader.optional(data, "logit_scale_log", reader.number, "")
        for key in ("preprocessing", "tools", "export_seconds"):
            fields[key] = reader.optional(data, key, reader.mapping, "")
        checkpoint = reader.optional(data, "checkpoint", reader.mapping, "")
        probe = reader.optional(data, "probe", reader.mapping, "")
        fields["synthetic"] = cls._one_synthetic(reader, data, checkpoint)
        fields["logit_scale"] = cls._one_logit_scale(reader, data, probe)
        if checkpoint is not None:
            fields["checkpoint"] = Checkpoint(
                source=reader.maybe(checkpoint, "source", reader.text, "checkpoint"),
                seed=reader.maybe(checkpoint, "seed", reader.count, "checkpoint"),
                sha256=reader.maybe(checkpoint, "sha256", reader.text, "checkpoint"),
                extra=rest(checkpoint, ("source", "seed", "sha256", "synthetic")),
            )
        if probe is not None:
            fields["probe"] = ProbeEntry(
                files=reader.optional(probe, "files", _file_list, "probe", reader) or [],
                images=reader.optional(probe, "images", reader.count, "probe"),
                texts=reader.optional(probe, "texts", reader.count, "probe"),
                extra=rest(probe, ("files", "images", "texts", "logit_scale")),
            )
        if "tokenizer" in data:
            tokenizer = reader.mapping(data["tokenizer"], "tokenizer")
            fields["tokenizer"] = TokenizerEntry(
                path=reader.optional(tokenizer, "path", reader.path, "tokenizer") or TOKENIZER_DIR,
                files=reader.optional(tokenizer, "files", _file_list, "tokenizer", reader) or [],
                extra=rest(tokenizer, ("path", "files")),
            )
        if "activations" in data:
            activations = reader.mapping(data["activations"], "activations")
            fields["activations"] = reader.optional(activations, "path", reader.path, "activations")
        fields["parity"] = {
            key: cls._parity_record(reader, entry, member("parity", key))
            for key, entry in (reader.optional(data, "parity", reader.mapping, "") or {}).items()
        }
        caches = reader.optional(data, "tensorrt_timing_caches", reader.mapping, "") or {}
        fields["tensorrt_timing_caches"] = {
            key: FileEntry.read(reader, entry, member("tensorrt_timing_caches", key)) for key, entry in caches.items()
        }
        return cls(**fields)

    @staticmethod
    def _one_synthetic(reader: FieldReader, data: dict, checkpoint: dict | None) -> bool:
        top = reader.optional(data, "synthetic", reader.flag, "")
        inner = reader.optional(checkpoint, "synthetic", reader.flag, "checkpoint") if checkpoint else None
        if top is not None and inner is not None and top != inner:
            reader.fail("synthetic", f"is {shown(top)} but checkpoint.synthetic is {shown(inner)}")
        return bool(top if top is not None else inner)

    @staticmethod
    def _one_logit_scale(reader: FieldReader, data: dict, probe: dict | None) -> float | None:
        top = reader.optional(data, "logit_scale", reader.number, "", True)
        inner = reader.optional(probe, "logit_scale", reader.number, "probe", True) if probe else None
        if top is not None and inner is not None and not math.isclose(top, inner, rel_tol=1e-6):
            reader.fail("logit_scale", f"is {top} but probe.logit_scale is {inner}")
        return top if top is not None else inner

    @staticmethod
    def _parity_record(reader: FieldReader, value, where: str) -> ParityRecord:
        entry = reader.mapping(value, where)
        failures = reader.optional(entry, "failures", reader.sequence, where) or []
        return ParityRecord(
            passed=reader.optional(entry, "passed", reader.flag, where),
            failures=[reader.text(reason, member(member(where, "failures"), i)) for i, reason in enumerate(failures)],
            extra=rest(entry, ("passed", "failures")),
        )

    # --- writing ---

    def to_json(self) -> dict:
        """The JSON object of this manifest (schema 2), keys in schema 1's order."""
        checkpoint = None if self.checkpoint is None else self.checkpoint.to_json(self.synthetic)
        probe = None if self.probe is None else self.probe.to_json(self.logit_scale)
        tokenizer = None if self.tokenizer is None else self.tokenizer.to_json()
        data = without_none({
            "schema_version": SCHEMA_VERSION,
            "model_id": self.model_id,
            "created": self.created,
            "ruclip_tiny_version": self.ruclip_tiny_version,
            "synthetic": self.synthetic,
            "checkpoint": checkpoint,
            "embedding_dim": self.embedding_dim,
            "logit_scale": self.logit_scale,
            "logit_scale_log": self.logit_scale_log,
            "preprocessing": self.preprocessing,
            "tokenizer": tokenizer,
            "artifacts": {key: artifact.to_json() for key, artifact in self.artifacts.items()},
            "probe": probe,
            "activations": None if self.activations is None else {"path": self.activations},
            "tools": self.tools,
            "export_seconds": self.export_seconds,
        })
        data["parity"] = {key: record.to_json() for key, record in self.parity.items()}
        if self.tensorrt_timing_caches:
            data["tensorrt_timing_caches"] = {key: e.to_json() for key, e in self.tensorrt_timing_caches.items()}
        return {**data, **self.extra}

    # --- the deployability rule ---

    def artifact(self, key: str, root: str | Path = "") -> Artifact:
        if key not in self.artifacts:
            known = ", ".join(sorted(self.artifacts))
            raise BundleError(f"bundle {root} has no artifact {key!r} (it has: {known})")
        return self.artifacts[key]

    def not_deployable_message(self, key: str, root: str | Path) -> str:
        """Why ``key`` may not be loaded, and the fix: the one message every loader gives."""
        if key in self.parity and self.parity[key].failures:
            why = "its parity check failed: " + "; ".join(self.parity[key].failures)
        else:
            why = "its parity check has not passed (not run, or not recorded)"
        check = f"ruclip-tiny parity {root}" + (" --backend tensorrt" if self.artifacts[key].format == ENGINE_FORMAT
                                                else "")
        return (
            f"artifact {key} ({self.artifacts[key].path}) of {root} is marked not deployable — {why}. Re-check it "
            f"with: {check}; to use it anyway pass allow_not_deployable=True (CLI: --allow-not-deployable)"
        )


def upgrade_v1(data: dict) -> dict:
    """A schema-1 manifest as schema 2 reads it (a copy): ``format`` of an artifact without one from its file's
    suffix, ``ruclip_tiny_version`` from the exporting tool versions when they name it. A graph or engine without a
    verdict stays without one: the one rule reads it as not deployable."""
    upgraded = {**data, "schema_version": SCHEMA_VERSION}
    artifacts = FieldReader.at(data, "artifacts")
    if isinstance(artifacts, dict):
        upgraded["artifacts"] = {key: _with_format(entry) for key, entry in artifacts.items()}
    tools = FieldReader.at(data, "tools")
    version = FieldReader.at(tools, "ruclip-tiny") if isinstance(tools, dict) else None
    if "ruclip_tiny_version" not in data and isinstance(version, str):
        upgraded["ruclip_tiny_version"] = version
    return upgraded


def _with_format(entry):
    if not isinstance(entry, dict) or "format" in entry or "path" not in entry or _format_of(entry["path"]) is None:
        return entry
    return {**entry, "format": _format_of(entry["path"])}
