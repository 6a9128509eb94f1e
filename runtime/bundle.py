"""A bundle directory: its layout, its manifest (the contract), and checks that the files are what it says.

Layout (paths relative to the bundle root; the manifest lists every artifact with sha256, size and I/O):

    manifest.json                     schema version, model, checkpoint, preprocessing, tokenizer, artifacts, parity
    tokenizer/                        the tokenizer files, copied in
    visual.onnx, textual.onnx         FP32, dynamic batch (and sequence length for text)
    visual.fp16.onnx, textual.fp16.onnx   FP16 compute with FP32 inputs/outputs: the precision contract
    reference.safetensors             the FP32 weights, so the bundle alone can rebuild every artifact
    probe/inputs.npz                  pixels float32 [Ni,3,224,224]; input_ids, attention_mask int64 [Nt,77];
                                      image_names, texts
    probe/reference.npz               image_features float32 [Ni,768], text_features float32 [Nt,768]
    probe/polygraphy/                 the same probe in Polygraphy's --load-inputs / --load-outputs JSON
    parity/report.json, parity/*.png  the last parity run

Torch-free: the runtime and ``ruclip-tiny parity`` read bundles on machines without torch.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from ruclip_tiny import spec
from ruclip_tiny.errors import RuclipTinyError
from ruclip_tiny.fileio import atomic_write_json, file_sha256

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
VOCAB_FILE = f"{TOKENIZER_DIR}/vocab.txt"
REFERENCE_WEIGHTS = "reference.safetensors"
PROBE_INPUTS = "probe/inputs.npz"
PROBE_REFERENCE = "probe/reference.npz"
POLYGRAPHY_DIR = "probe/polygraphy"
PARITY_DIR = "parity"
PRECISIONS = ("fp32", "fp16")


def artifact_key(encoder: str, precision: str) -> str:
    """Manifest key of an encoder graph, e.g. ``visual.fp16``."""
    return f"{encoder}.{precision}"


def fused_key(encoder: str, precision: str) -> str:
    """Manifest key of an encoder graph with ONNX Runtime's fused kernels, e.g. ``textual.fp32.fused``."""
    return f"{artifact_key(encoder, precision)}.fused"


def onnx_file(encoder: str, precision: str) -> str:
    """File name of an encoder graph: ``visual.onnx`` (fp32) or ``visual.fp16.onnx``."""
    return f"{encoder}.onnx" if precision == "fp32" else f"{encoder}.{precision}.onnx"


class BundleError(RuclipTinyError):
    """A directory that is not a usable bundle, or whose files do not match its manifest."""


# --- paths: nothing a manifest names may lie outside its bundle ----------------------------------------------------


def contained_path(root: Path, relative: object, what: str) -> Path:
    """``root / relative`` when it resolves (symlinks followed) inside ``root``; else BundleError naming ``what``.

    A bundle may come from elsewhere: a manifest naming ``/etc/passwd``, ``../x`` or a symlink out of the bundle must
    not make any command read (or report the size of) a file outside it.
    """
    if not isinstance(relative, str) or not relative:
        raise BundleError(f"{what}: the path must be a non-empty string, got {_shown(relative)} ({root})")
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


# --- the manifest: read and validated in one place -----------------------------------------------------------------

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _shown(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, (str, int, float, list, dict)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _member(parent: str, key: object) -> str:
    """``artifacts["visual.fp32"]``, ``tokenizer.files[0]``: how an error names a field."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if isinstance(key, str) and key.isidentifier():
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{json.dumps(key, ensure_ascii=False)}]"


class _ManifestCheck:
    """The checks of one manifest's fields; each error names the field and the bundle."""

    def __init__(self, root: Path):
        self.root = root

    def fail(self, field: str, problem: str) -> NoReturn:
        raise BundleError(
            f"{self.root / MANIFEST}: {field} {problem}; the manifest is damaged or was edited — re-export the "
            f"bundle (ruclip-tiny export --out {self.root} --force)"
        )

    def mapping(self, value, field: str) -> dict:
        if not isinstance(value, dict):
            self.fail(field, f"must be an object, got {_shown(value)}")
        return value

    def sequence(self, value, field: str) -> list:
        if not isinstance(value, list):
            self.fail(field, f"must be a list, got {_shown(value)}")
        return value

    def text(self, value, field: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(field, f"must be a non-empty string, got {_shown(value)}")
        return value

    def flag(self, value, field: str) -> bool:
        if not isinstance(value, bool):
            self.fail(field, f"must be true or false, got {_shown(value)}")
        return value

    def count(self, value, field: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(field, f"must be an integer >= {minimum}, got {_shown(value)}")
        return value

    def positive_number(self, value, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            self.fail(field, f"must be a finite number above 0, got {_shown(value)}")
        return float(value)

    def number(self, value, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(field, f"must be a finite number, got {_shown(value)}")
        return float(value)

    def path(self, value, field: str) -> str:
        self.text(value, field)
        contained_path(self.root, value, f"{self.root / MANIFEST}: {field}")
        return value

    def optional(self, container: dict, key: str, check, field: str, *args) -> None:
        if key in container:
            check(container[key], _member(field, key), *args)

    def file_entry(self, value, field: str) -> dict:
        """A file the bundle vouches for: ``path`` (inside the bundle), ``size``, ``sha256``."""
        entry = self.mapping(value, field)
        for key in ("path", "size", "sha256"):
            if key not in entry:
                self.fail(field, f"has no {key!r} (a file entry needs path, size and sha256)")
        self.path(entry["path"], _member(field, "path"))
        self.count(entry["size"], _member(field, "size"))
        if not isinstance(entry["sha256"], str) or not _SHA256.fullmatch(entry["sha256"]):
            self.fail(_member(field, "sha256"), f"must be 64 lowercase hex digits, got {_shown(entry['sha256'])}")
        return entry

    def file_list(self, value, field: str) -> None:
        for index, entry in enumerate(self.sequence(value, field)):
            self.file_entry(entry, _member(field, index))

    def tensors(self, value, field: str) -> None:
        for index, tensor in enumerate(self.sequence(value, field)):
            where = _member(field, index)
            tensor = self.mapping(tensor, where)
            self.text(tensor.get("name"), _member(where, "name"))
            self.text(tensor.get("dtype"), _member(where, "dtype"))
            shape = self.sequence(tensor.get("shape"), _member(where, "shape"))
            for axis, dim in enumerate(shape):
                if isinstance(dim, bool) or not isinstance(dim, (int, str)):
                    where_axis = _member(_member(where, "shape"), axis)
                    self.fail(where_axis, f"must be an integer or a name, got {_shown(dim)}")

    def artifact(self, value, field: str) -> None:
        entry = self.file_entry(value, field)
        self.optional(entry, "deployable", self.flag, field)
        for key in ("format", "precision", "fused_variant_of"):
            self.optional(entry, key, self.text, field)
        if "encoder" in entry and entry["encoder"] not in spec.ENCODERS:
            choices = ", ".join(spec.ENCODERS)
            self.fail(_member(field, "encoder"), f"must be one of {choices}, got {_shown(entry['encoder'])}")
        self.optional(entry, "max_batch", self.count, field, 1)
        self.optional(entry, "inputs", self.tensors, field)
        self.optional(entry, "outputs", self.tensors, field)

    def manifest(self, manifest) -> None:
        if not isinstance(manifest, dict):
            self.fail("the top level", f"must be an object, got {_shown(manifest)}")
        for key in ("model_id", "created"):
            self.optional(manifest, key, self.text, "")
        self.optional(manifest, "synthetic", self.flag, "")
        if "embedding_dim" in manifest:
            dim = self.count(manifest["embedding_dim"], "embedding_dim", 1)
            if dim != spec.EMBED_DIM:
                self.fail("embedding_dim", f"is {dim}, but this model's embeddings have {spec.EMBED_DIM} dimensions")
        self.optional(manifest, "logit_scale", self.positive_number, "")
        self.optional(manifest, "logit_scale_log", self.number, "")

        if "artifacts" not in manifest:
            self.fail("artifacts", "is missing")
        artifacts = self.mapping(manifest["artifacts"], "artifacts")
        if not artifacts:
            self.fail("artifacts", "is empty: the bundle lists no graph to run")
        for key, entry in artifacts.items():
            self.artifact(entry, _member("artifacts", key))

        if "checkpoint" in manifest:
            self.optional(self.mapping(manifest["checkpoint"], "checkpoint"), "synthetic", self.flag, "checkpoint")
        if "tokenizer" in manifest:
            tokenizer = self.mapping(manifest["tokenizer"], "tokenizer")
            self.optional(tokenizer, "path", self.path, "tokenizer")
            self.optional(tokenizer, "files", self.file_list, "tokenizer")
        if "probe" in manifest:
            probe = self.mapping(manifest["probe"], "probe")
            self.optional(probe, "files", self.file_list, "probe")
            self.optional(probe, "logit_scale", self.positive_number, "probe")
            for key in ("images", "texts"):
                self.optional(probe, key, self.count, "probe")
        if "parity" in manifest:
            for key, entry in self.mapping(manifest["parity"], "parity").items():
                entry = self.mapping(entry, _member("parity", key))
                self.optional(entry, "passed", self.flag, _member("parity", key))
                if "failures" in entry:
                    field = _member(_member("parity", key), "failures")
                    for index, reason in enumerate(self.sequence(entry["failures"], field)):
                        self.text(reason, _member(field, index))
        if "tensorrt_timing_caches" in manifest:
            for key, entry in self.mapping(manifest["tensorrt_timing_caches"], "tensorrt_timing_caches").items():
                self.file_entry(entry, _member("tensorrt_timing_caches", key))
        if "activations" in manifest:
            self.optional(self.mapping(manifest["activations"], "activations"), "path", self.path, "activations")


def validate_manifest(manifest: object, root: str | Path) -> dict:
    """``manifest`` (parsed JSON) when it is a manifest this version reads: schema version, every field's type, a
    non-empty ``artifacts`` whose entries each have ``path``, ``size`` and ``sha256``, every named path inside
    ``root``. Otherwise BundleError naming the field and the bundle."""
    root = Path(root)
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{root / MANIFEST} has schema version {_shown(version)}; this ruclip-tiny reads version "
            f"{SCHEMA_VERSION} — re-export the bundle with this version"
        )
    _ManifestCheck(root).manifest(manifest)
    return manifest


def read_manifest(root: str | Path) -> dict:
    """The manifest of the bundle at ``root``, parsed and validated (see ``validate_manifest``): the one place a
    manifest is read, so every command refuses a bad one the same way. Raises BundleError."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(
            f"{root} is not a bundle (no {MANIFEST}); create one with: ruclip-tiny export --out {root}"
        )
    contained_path(root, MANIFEST, str(path))
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); re-export the bundle") from None
    except OSError as exc:
        raise BundleError(f"{path} cannot be read ({exc})") from None
    return validate_manifest(manifest, root)


# --- the bundle ----------------------------------------------------------------------------------------------------


@dataclass
class Bundle:
    """A bundle on disk and its parsed, validated manifest."""

    root: Path
    manifest: dict

    @classmethod
    def load(cls, root: str | Path) -> "Bundle":
        """Read and validate ``root``'s manifest (``read_manifest``); raises BundleError."""
        root = Path(root)
        return cls(root, read_manifest(root))

    def path(self, relative: str) -> Path:
        """``root / relative``, refused (BundleError) when it resolves outside the bundle."""
        return contained_path(self.root, relative, f"bundle {self.root}")

    @property
    def artifacts(self) -> dict:
        return self.manifest["artifacts"]

    def artifact(self, key: str) -> dict:
        if key not in self.artifacts:
            known = ", ".join(sorted(self.artifacts))
            raise BundleError(f"bundle {self.root} has no artifact {key!r} (it has: {known})")
        return self.artifacts[key]

    @property
    def logit_scale(self) -> float | None:
        """The zero-shot logit multiplier (exp of the model's parameter); None when the manifest has none."""
        probe = self.manifest.get("probe") or {}
        scale = self.manifest.get("logit_scale", probe.get("logit_scale"))
        return None if scale is None else float(scale)

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest.get("embedding_dim", spec.EMBED_DIM))

    @property
    def synthetic(self) -> bool:
        """Exported from synthetic weights (the top-level marker, else the checkpoint's)."""
        checkpoint = self.manifest.get("checkpoint") or {}
        return bool(self.manifest.get("synthetic", checkpoint.get("synthetic", False)))

    def verify(self, keys: list[str] | None = None) -> None:
        """Check size and sha256 of the listed artifacts (all by default) against the manifest."""
        for key in keys if keys is not None else sorted(self.artifacts):
            self.verify_file(key, self.artifact(key))

    def verify_file(self, label: str, entry: dict) -> None:
        """Check one file described by a manifest entry (``path``, ``size``, ``sha256``); raise BundleError if not."""
        path = self.path(entry["path"])
        if not path.is_file():
            raise BundleError(f"{label}: {path} is missing; re-export the bundle (ruclip-tiny export --force)")
        size = path.stat().st_size
        if size != entry["size"] or file_sha256(path) != entry["sha256"]:
            raise BundleError(
                f"{label}: {path} does not match the manifest ({size} bytes, expected {entry['size']}; sha256 "
                "differs): the file was changed or corrupted — re-export the bundle (ruclip-tiny export --force)"
            )

    def check_tokenizer(self, verify: bool = True) -> None:
        """The tokenizer every text needs: ``tokenizer/vocab.txt`` present, every file of ``tokenizer/`` inside the
        bundle (the tokenizer reads the folder, listed or not), and each tokenizer file the manifest lists present
        (and, with ``verify``, of its recorded size and sha256: a changed vocabulary changes every text embedding).
        Raises BundleError."""
        tokenizer = self.manifest.get("tokenizer") or {}
        listed = tokenizer.get("files", [])
        directory = self.path(TOKENIZER_DIR)
        for path in sorted(directory.iterdir()) if directory.is_dir() else []:
            self.path(f"{TOKENIZER_DIR}/{path.name}")
        vocab = self.path(VOCAB_FILE)
        if not vocab.is_file():
            raise BundleError(
                f"{vocab} is missing: texts cannot be tokenized without it — re-export the bundle "
                "(ruclip-tiny export --force)"
            )
        for entry in listed:
            label = f"tokenizer file {entry['path']}"
            if verify:
                self.verify_file(label, entry)
            elif not self.path(entry["path"]).is_file():
                raise BundleError(f"{label}: {self.path(entry['path'])} is missing; re-export the bundle")

    def write_manifest(self) -> None:
        """Rewrite manifest.json atomically (a reader sees the old or the new manifest, never a mix)."""
        atomic_write_json(self.root / MANIFEST, self.manifest)


def describe_file(root: Path, relative: str, **fields) -> dict:
    """A manifest entry for a file: path, size, sha256, plus ``fields``."""
    path = Path(root) / relative
    return {"path": relative, "size": path.stat().st_size, "sha256": file_sha256(path), **fields}
