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
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ruclip_tiny.fileio import atomic_write_json, file_sha256
from runtime.manifest import (
    ENGINES_DIR,
    MANIFEST,
    REFERENCE_KEY,
    SCHEMA_VERSION,
    TOKENIZER_DIR,
    Artifact,
    BundleError,
    FileEntry,
    Manifest,
    NotDeployableError,
    artifact_key,
    contained_path,
    fused_key,
    onnx_file,
)

__all__ = [  # names of the bundle contract that readers import from here, wherever they are defined
    "ENGINES_DIR", "MANIFEST", "REFERENCE_KEY", "SCHEMA_VERSION", "TOKENIZER_DIR", "BundleError",
    "NotDeployableError", "artifact_key", "contained_path", "fused_key", "onnx_file",
]

VOCAB_FILE = f"{TOKENIZER_DIR}/vocab.txt"
REFERENCE_WEIGHTS = "reference.safetensors"
PROBE_INPUTS = "probe/inputs.npz"
PROBE_REFERENCE = "probe/reference.npz"
POLYGRAPHY_DIR = "probe/polygraphy"
PARITY_DIR = "parity"
PRECISIONS = ("fp32", "fp16")

logger = logging.getLogger("runtime.bundle")


def validate_manifest(manifest: object, root: str | Path) -> Manifest:
    """The typed manifest of parsed JSON ``manifest`` for the bundle at ``root`` (``Manifest.from_json``): schema
    version, every field's type, every named path inside ``root``; else BundleError naming the field and the bundle."""
    return Manifest.from_json(manifest, root)


def read_manifest(root: str | Path) -> Manifest:
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
    """A bundle on disk and its typed, validated manifest.

    Each file's sha256 is computed once for this object while the file stays as it was (same size, mtime, inode):
    a load that checks a file while choosing a backend and again before opening it reads it once.
    """

    root: Path
    manifest: Manifest
    _digests: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, root: str | Path) -> Bundle:
        """Read and validate ``root``'s manifest (``read_manifest``); raises BundleError."""
        root = Path(root)
        return cls(root, read_manifest(root))

    def path(self, relative: str) -> Path:
        """``root / relative``, refused (BundleError) when it resolves outside the bundle."""
        return contained_path(self.root, relative, f"bundle {self.root}")

    @property
    def artifacts(self) -> dict[str, Artifact]:
        return self.manifest.artifacts

    def artifact(self, key: str) -> Artifact:
        return self.manifest.artifact(key, self.root)

    @property
    def logit_scale(self) -> float | None:
        """The zero-shot logit multiplier (exp of the model's parameter); None when the manifest has none."""
        return self.manifest.logit_scale

    @property
    def embedding_dim(self) -> int:
        return self.manifest.embedding_dim

    @property
    def synthetic(self) -> bool:
        """Exported from synthetic weights."""
        return self.manifest.synthetic

    # --- checks of the files ---

    def sha256(self, path: Path) -> str:
        """sha256 of ``path`` (a file of this bundle), computed once while the file is unchanged."""
        status = os.stat(path)
        signature = (status.st_size, status.st_mtime_ns, status.st_ino)
        known = self._digests.get(path)
        if known is None or known[0] != signature:
            known = (signature, file_sha256(path))
            self._digests[path] = known
        return known[1]

    def file_problem(self, entry: FileEntry) -> str | None:
        """How the file of ``entry`` differs from what the manifest says (``is missing``, ``does not match the
        manifest (…)``), else None."""
        path = self.path(entry.path)
        if not path.is_file():
            return "is missing"
        size = path.stat().st_size
        if size != entry.size or self.sha256(path) != entry.sha256:
            return f"does not match the manifest ({size} bytes, expected {entry.size}; sha256 differs)"
        return None

    def verify(self, keys: Iterable[str] | None = None) -> None:
        """Check size and sha256 of the listed artifacts (all by default) against the manifest."""
        for key in keys if keys is not None else sorted(self.artifacts):
            self.verify_file(key, self.artifact(key))

    def verify_file(self, label: str, entry: FileEntry) -> None:
        """Check one file described by a manifest entry (``path``, ``size``, ``sha256``); raise BundleError if not."""
        problem = self.file_problem(entry)
        if problem is None:
            return
        path = self.path(entry.path)
        if problem == "is missing":
            raise BundleError(f"{label}: {path} is missing; re-export the bundle (ruclip-tiny export --force)")
        raise BundleError(
            f"{label}: {path} {problem}: the file was changed or corrupted — re-export the bundle (ruclip-tiny export "
            "--force)"
        )

    def check_deployable(self, keys: Iterable[str], allow_not_deployable: bool = False) -> None:
        """Refuse (NotDeployableError) an artifact whose last parity run did not pass — a graph or engine without a
        verdict included — unless ``allow_not_deployable`` (then it is logged). The reference weights are not gated."""
        for key in keys:
            if self.artifact(key).usable:
                continue
            if allow_not_deployable:
                logger.warning("using %s although the manifest marks it not deployable (allowed)", key)
                continue
            raise NotDeployableError(self.manifest.not_deployable_message(key, self.root))

    def check_tokenizer(self, verify: bool = True) -> None:
        """The tokenizer every text needs: ``tokenizer/vocab.txt`` present, every file of ``tokenizer/`` inside the
        bundle (the tokenizer reads the folder, listed or not), and each tokenizer file the manifest lists present
        (and, with ``verify``, of its recorded size and sha256: a changed vocabulary changes every text embedding).
        Raises BundleError."""
        listed = self.manifest.tokenizer.files if self.manifest.tokenizer is not None else []
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
            label = f"tokenizer file {entry.path}"
            if verify:
                self.verify_file(label, entry)
            elif not self.path(entry.path).is_file():
                raise BundleError(f"{label}: {self.path(entry.path)} is missing; re-export the bundle")

    def write_manifest(self) -> None:
        """Rewrite manifest.json atomically (a reader sees the old or the new manifest, never a mix)."""
        atomic_write_json(self.root / MANIFEST, self.manifest.to_json())


def describe_file(root: Path, relative: str, **fields) -> dict:
    """A manifest entry for a file, as JSON: path, size, sha256, plus ``fields``."""
    return {**FileEntry.describe(root, relative).to_json(), **fields}
