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
from dataclasses import dataclass
from pathlib import Path

from ruclip_tiny.errors import RuclipTinyError
from ruclip_tiny.fileio import atomic_write_json, file_sha256

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
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


@dataclass
class Bundle:
    """A bundle on disk and its parsed manifest."""

    root: Path
    manifest: dict

    @classmethod
    def load(cls, root: str | Path) -> "Bundle":
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise BundleError(
                f"{root} is not a bundle (no {MANIFEST}); create one with: ruclip-tiny export --out {root}"
            )
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{path} is not valid JSON ({exc}); re-export the bundle") from None
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"{path} has schema version {version!r}; this ruclip-tiny reads version {SCHEMA_VERSION} — "
                "re-export the bundle with this version"
            )
        return cls(root, manifest)

    def path(self, relative: str) -> Path:
        return self.root / relative

    @property
    def artifacts(self) -> dict:
        return self.manifest["artifacts"]

    def artifact(self, key: str) -> dict:
        if key not in self.artifacts:
            raise BundleError(f"bundle {self.root} has no artifact {key!r} (it has: {', '.join(sorted(self.artifacts))})")
        return self.artifacts[key]

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

    def write_manifest(self) -> None:
        """Rewrite manifest.json atomically (a reader sees the old or the new manifest, never a mix)."""
        atomic_write_json(self.root / MANIFEST, self.manifest)


def describe_file(root: Path, relative: str, **fields) -> dict:
    """A manifest entry for a file: path, size, sha256, plus ``fields``."""
    path = Path(root) / relative
    return {"path": relative, "size": path.stat().st_size, "sha256": file_sha256(path), **fields}
