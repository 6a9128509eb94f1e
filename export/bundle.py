"""``ruclip-tiny export``: build a complete bundle from the reference, then gate it with parity.

The bundle is assembled in a hidden staging directory beside the target and renamed into place only when every
stage has finished, so an interrupted or failed export never leaves a directory that passes for a bundle, and an
existing bundle is replaced (with ``force``) only by a complete new one. ``force`` replaces a bundle and nothing
else: a directory without a manifest this project wrote, or holding files beside the bundle's own, is refused.
A failure of the file system (no space, no permission, a path that cannot be a directory) ends in one ExportError
that names the path and the fix.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import json
import os
import platform
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path, PurePosixPath

from ruclip_tiny import __version__, spec
from ruclip_tiny.errors import RuclipTinyError
from ruclip_tiny.fileio import (
    STAGING_INFIX,
    Ownership,
    RemovedStaging,
    atomic_path,
    atomic_write_json,
    check_target,
    make_staging_directory,
    remove_stale_staging,
    replace_directory,
)
from ruclip_tiny.progress import StageTimer
from runtime.bundle import MANIFEST, PRECISIONS, PROBE_INPUTS, REFERENCE_WEIGHTS, TOKENIZER_DIR, Bundle
from runtime.manifest import (
    ONNX_FORMAT,
    REFERENCE_KEY,
    WEIGHTS_FORMAT,
    Artifact,
    Checkpoint,
    FileEntry,
    Manifest,
    TokenizerEntry,
    artifact_key,
    fused_key,
    onnx_file,
    spec_dims,
    spec_io,
)

TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
TOOLS = ("torch", "timm", "transformers", "onnx", "onnxscript", "onnxruntime", "numpy", "pillow", "tokenizers")
# Directories of a bundle that later commands fill (parity reports, TensorRT engines and their timing caches, the
# export's own reports): whatever they hold is the bundle's.
GENERATED_DIRS = ("parity", "engines", "reports")
# A finished bundle holds 11.4 bytes per model parameter (measured: 437.6 MB for 38,317,537 parameters): FP32
# reference weights and graphs (4 + 4), FP16 graphs (2), the fused FP32 text graph (1.1), the probe set.
BUNDLE_BYTES_ESTIMATE = round(spec.PARAMETER_COUNT * 11.5)


class ExportError(RuclipTinyError):
    """An export that cannot start (target exists, bad arguments) or that failed part way."""


def _tool_versions() -> dict:
    """Installed versions of the tools an export depends on; None for one that is not installed (ruclip-tiny
    itself run from a source tree without ``pip install`` included)."""
    versions = {"python": platform.python_version()}
    for name in ("ruclip-tiny", *TOOLS):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _manifest_paths(value) -> set[str]:
    """Every ``"path"`` string anywhere in a manifest (artifacts, tokenizer and probe files, reports)."""
    found = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "path" and isinstance(item, str):
                path = PurePosixPath(item)
                if not path.is_absolute() and ".." not in path.parts:
                    found.add(str(path))
            else:
                found |= _manifest_paths(item)
    elif isinstance(value, list):
        for item in value:
            found |= _manifest_paths(item)
    return found


def bundle_files(root: Path) -> set[str]:
    """The files ``root``'s manifest names as the bundle's own (manifest.json included); raises ValueError when
    ``root`` has no manifest.json written by ruclip-tiny export (JSON object, integer schema_version, our model_id)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ValueError(f"it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"its {MANIFEST} is not JSON") from None
    # Deliberately lenient (any schema version, fields unchecked): what matters here is only whose files these are.
    if not isinstance(manifest, dict) or "model_id" not in manifest or manifest["model_id"] != spec.MODEL_ID:
        raise ValueError(f"its {MANIFEST} is not a {spec.MODEL_ID} manifest (model_id is not {spec.MODEL_ID!r})")
    if "schema_version" not in manifest or type(manifest["schema_version"]) is not int:
        raise ValueError(f"its {MANIFEST} has no integer schema_version")
    return {MANIFEST} | _manifest_paths(manifest)


def _generated(relative: PurePosixPath) -> bool:
    return relative.parts[0] in GENERATED_DIRS


BUNDLE_OWNERSHIP = Ownership(
    noun="bundle", command="ruclip-tiny export", listed_files=bundle_files, generated=_generated, error=ExportError
)


def _free_bytes(path: Path) -> int | None:
    for ancestor in (path, *path.parents):
        if ancestor.is_dir():
            try:
                return shutil.disk_usage(ancestor).free
            except OSError:
                return None
    return None


def _written_path(filename, out: Path) -> str:
    """``filename`` as the user knows it: a file inside the staging directory is shown inside ``out``."""
    if not filename:
        return str(out)
    path = Path(os.fsdecode(filename))
    if path.parent == out.parent and path.name.startswith(f".{out.name}{STAGING_INFIX}"):
        return str(out)
    for parent in path.parents:
        if parent.parent == out.parent and parent.name.startswith(f".{out.name}{STAGING_INFIX}"):
            return str(out / path.relative_to(parent))
    return str(path)


def os_error_message(exc: OSError, out: Path) -> str:
    """One line naming the path and the fix for a file-system failure while exporting to ``out``."""
    where = _written_path(exc.filename, out)
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free = _free_bytes(out.parent)
        free_text = f"{free / 1e6:.0f} MB are free there" if free is not None else "the free space is unknown"
        what = "no space left on the device" if exc.errno == errno.ENOSPC else "disk quota exceeded on the device"
        writing = f" (while writing {where})" if where != str(out) else ""
        return (f"{what} holding {out}{writing}: a bundle needs about {BUNDLE_BYTES_ESTIMATE / 1e6:.0f} MB and "
                f"{free_text}; free some space, or choose an --out on another disk")
    if not (Path(where).is_relative_to(out) or out.is_relative_to(where)):
        return f"cannot use {where} while exporting to {out}: {reason}; check that path"  # an input, e.g. unreadable
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {where}: {reason}; choose an --out in a directory you can write to"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"cannot create {where}: {reason} (a part of the path is a file); choose another --out"
    return f"cannot write {where}: {reason}; choose another --out"


def _checkpoint_entry(model, checkpoint: str | None) -> Checkpoint:
    info = model.checkpoint_info
    if info.synthetic:
        from ruclip_tiny.synthetic import SYNTHETIC_MARKER

        return Checkpoint(source=SYNTHETIC_MARKER, seed=info.seed, sha256=None)
    return Checkpoint(source=Path(checkpoint).name, seed=None, sha256=info.sha256)


def graph_artifact(root: Path, relative: str, encoder: str, precision: str, **extra) -> Artifact:
    """The manifest entry of an encoder graph written at ``root / relative``: its I/O from the one description
    (``ruclip_tiny.spec``), ``deployable`` false until parity passes, ``extra`` fields as given."""
    inputs, outputs = spec_io(encoder)
    return Artifact.describe(
        root, relative, format=ONNX_FORMAT, encoder=encoder, precision=precision, deployable=False, inputs=inputs,
        outputs=outputs, extra={"dims": spec_dims(encoder), **extra},
    )


def _copy_tokenizer(tokenizer, root: Path) -> list[FileEntry]:
    entries = []
    for name in TOKENIZER_FILES:
        source = tokenizer.directory / name
        if source.is_file():
            relative = f"{TOKENIZER_DIR}/{name}"
            with atomic_path(root / relative) as temporary:
                shutil.copyfile(source, temporary)
            entries.append(FileEntry.describe(root, relative))
    return entries


def _write_reference_weights(model, root: Path) -> None:
    from safetensors.torch import save

    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    # Serialised here and written by Python, so that a full disk raises OSError (ENOSPC), which names the problem;
    # save_file reports it as a SafetensorError holding Rust's message.
    data = save(state, metadata={"model_id": spec.MODEL_ID})
    with atomic_path(root / REFERENCE_WEIGHTS) as temporary:
        temporary.write_bytes(data)


def _preprocessing_entry() -> dict:
    return {
        "image_size": spec.IMAGE_SIZE,
        "steps": [
            "decode with Pillow, no EXIF transpose",
            f"resize shorter side to {spec.IMAGE_SIZE} (bilinear, in the image's own mode; long side truncated)",
            f"center crop {spec.IMAGE_SIZE} (offsets rounded half to even)",
            "convert to RGB",
            "to float32 / 255",
            "normalize (x - mean) / std",
        ],
        "mean": list(spec.IMAGE_MEAN),
        "std": list(spec.IMAGE_STD),
        "layout": "NCHW float32",
    }


def _tokenizer_entry(tokenizer, files: list[FileEntry]) -> TokenizerEntry:
    special_ids = {"pad": tokenizer.pad_id, "cls": tokenizer.cls_id, "sep": tokenizer.sep_id, "unk": tokenizer.unk_id}
    return TokenizerEntry(path=TOKENIZER_DIR, files=files, extra={
        "kind": "DistilBertTokenizer (WordPiece, BERT basic tokenization)",
        "demo_vocabulary": tokenizer.is_demo,
        "do_lower_case": tokenizer.do_lower_case,
        "max_length": spec.MAX_TEXT_LENGTH,
        "padding": "max_length",
        "truncation": True,
        "vocab_size": tokenizer.vocab_size,
        "special_ids": special_ids,
    })


def _fused_textual(model, root: Path, timer: StageTimer, on_line: Callable[[str], None]) -> dict[str, Artifact]:
    """``textual.fused.onnx`` (ONNX Runtime's fused transformer kernels), or nothing when the fusion falls short:
    it is an optional speed-up, never a reason to fail an export."""
    from export.onnxruntime_fusion import FUSED_FILE, FusionError, export_fused_textual

    with timer.stage(f"exporting {FUSED_FILE}"):
        try:
            facts = export_fused_textual(model, root / FUSED_FILE)
        except FusionError as exc:
            on_line(f"  {FUSED_FILE} skipped: {exc}")
            return {}
    encoder = spec.TEXTUAL.name
    return {
        fused_key(encoder, "fp32"): dataclasses.replace(
            graph_artifact(root, FUSED_FILE, encoder, "fp32", runtime="onnxruntime", mask=facts["mask"], export=facts),
            fused_variant_of=artifact_key(encoder, "fp32"),
        )
    }


def export_bundle(
    out: str | Path,
    checkpoint: str | None = None,
    tokenizer: str | None = None,
    force: bool = False,
    seed: int = 0,
    run_parity: bool = True,
    timer: StageTimer | None = None,
    on_removed: Callable[[RemovedStaging], None] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> Manifest:
    """Write a complete bundle to ``out``; returns its manifest. Synthetic weights and the demo vocabulary by default.

    Stages: model and tokenizer, reference weights, FP32 graphs, FP16 graphs, probe set, activation scan, manifest,
    parity (which marks every graph deployable or not). Raises ExportError before touching anything when ``out``
    exists and is not empty, unless ``force`` is set and ``out`` is a bundle holding nothing but its own files.
    Staging directories that killed exports to ``out`` left behind are removed first; ``on_removed`` is called with
    each. Every OSError ends as an ExportError naming the path and the fix.
    timer: times the stages (silent unless given a stream); on_line: receives the report lines a person reads (the
    synthetic-weights note, the activation report, the parity table) — the library prints nothing itself.
    """
    out = Path(out)
    timer = timer or StageTimer()
    try:
        check_target(out, force, BUNDLE_OWNERSHIP)
        for removed in remove_stale_staging(out):
            if on_removed is not None:
                on_removed(removed)
        staging = make_staging_directory(out)
        try:
            manifest = _build(staging, checkpoint, tokenizer, seed, run_parity, timer, on_line or _silent)
            replace_directory(staging, out, BUNDLE_OWNERSHIP, force)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    except OSError as exc:
        raise ExportError(os_error_message(exc, out)) from None
    return manifest


def _silent(line: str) -> None:
    pass


def _build(
    root: Path, checkpoint, tokenizer_source, seed: int, run_parity: bool, timer: StageTimer,
    on_line: Callable[[str], None],
) -> Manifest:
    from export.activations import activation_report, format_activation_report
    from export.onnx import export_encoder
    from export.probe import write_probe
    from ruclip_tiny.fp16 import fp16_model
    from ruclip_tiny.synthetic import load_model
    from ruclip_tiny.tokenizer import load_tokenizer

    with timer.stage("loading the reference model and tokenizer"):
        model = load_model(checkpoint, seed)
        tokenizer = load_tokenizer(tokenizer_source)
    if model.checkpoint_info.synthetic:
        on_line(f"  SYNTHETIC weights (seed {seed}): this bundle proves the toolchain, its embeddings mean nothing")
    if tokenizer.is_demo:
        on_line("  demo vocabulary: texts are tokenized with the shipped demo WordPiece vocabulary")
    with timer.stage(f"writing {REFERENCE_WEIGHTS} and the tokenizer"):
        _write_reference_weights(model, root)
        tokenizer_files = _copy_tokenizer(tokenizer, root)

    artifacts = {REFERENCE_KEY: Artifact.describe(root, REFERENCE_WEIGHTS, format=WEIGHTS_FORMAT, precision="fp32")}
    variants = {"fp32": model}
    for precision in PRECISIONS:
        if precision not in variants:
            with timer.stage(f"building the {precision} variant"):
                variants[precision] = fp16_model(model)
        for encoder in spec.ENCODERS:
            name = onnx_file(encoder, precision)
            with timer.stage(f"exporting {name}"):
                facts = export_encoder(variants[precision], encoder, root / name, reference=model)
            artifacts[artifact_key(encoder, precision)] = graph_artifact(root, name, encoder, precision, export=facts)

    artifacts.update(_fused_textual(model, root, timer, on_line))

    with timer.stage("writing the probe set and reference outputs"):
        probe = write_probe(model, tokenizer, root)
    with timer.stage("scanning activations against the FP16 range"):
        import numpy as np

        with np.load(root / PROBE_INPUTS, allow_pickle=False) as inputs:
            activations = activation_report(
                model, tokenizer, inputs["pixels"], inputs["input_ids"], inputs["attention_mask"]
            )
        atomic_write_json(root / "reports" / "activations.json", activations)
    on_line(format_activation_report(activations))

    manifest = Manifest(
        model_id=spec.MODEL_ID,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        ruclip_tiny_version=__version__,
        synthetic=model.checkpoint_info.synthetic,
        checkpoint=_checkpoint_entry(model, checkpoint),
        embedding_dim=spec.EMBED_DIM,
        logit_scale=float(model.logit_scale.exp()),
        logit_scale_log=float(model.logit_scale),
        preprocessing=_preprocessing_entry(),
        tokenizer=_tokenizer_entry(tokenizer, tokenizer_files),
        artifacts=artifacts,
        probe=probe,
        activations="reports/activations.json",
        tools=_tool_versions(),
        export_seconds=dict(timer.seconds),
    )
    atomic_write_json(root / MANIFEST, manifest.to_json())
    if run_parity:
        from runtime.parity import format_table
        from runtime.parity import run_parity as parity

        with timer.stage("parity of every graph against the reference outputs"):
            report = parity(root, PRECISIONS)
        on_line(format_table(report))
    bundle = Bundle.load(root)
    bundle.manifest.export_seconds = dict(timer.seconds)
    bundle.write_manifest()
    return bundle.manifest
