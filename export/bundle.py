"""``ruclip-tiny export``: build a complete bundle from the reference, then gate it with parity.

The bundle is assembled in a hidden staging directory beside the target and renamed into place only when every
stage has finished, so an interrupted or failed export never leaves a directory that passes for a bundle, and an
existing bundle is replaced (with ``force``) only by a complete new one.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import uuid
from importlib import metadata
from pathlib import Path

from ruclip_tiny import spec
from ruclip_tiny.errors import RuclipTinyError
from ruclip_tiny.fileio import atomic_path, atomic_write_json
from ruclip_tiny.progress import StageTimer
from runtime.bundle import (
    MANIFEST,
    PRECISIONS,
    PROBE_INPUTS,
    REFERENCE_WEIGHTS,
    SCHEMA_VERSION,
    TOKENIZER_DIR,
    artifact_key,
    describe_file,
    fused_key,
    onnx_file,
)

TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
TOOLS = ("torch", "timm", "transformers", "onnx", "onnxscript", "onnxruntime", "numpy", "pillow", "tokenizers")
STAGING_PREFIX = ".partial-"


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


def _check_target(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory; choose another --out")
    if out.exists() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} already exists; pass --force to replace it, or choose another --out")


def _replace_directory(staging: Path, out: Path) -> None:
    """Move the finished staging directory to ``out``; an old ``out`` is removed only after the new one is in."""
    if out.exists():
        retired = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, retired)
        os.replace(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, out)


def _checkpoint_entry(model, checkpoint: str | None) -> dict:
    info = model.checkpoint_info
    if info.synthetic:
        from ruclip_tiny.synthetic import SYNTHETIC_MARKER

        return {"source": SYNTHETIC_MARKER, "synthetic": True, "seed": info.seed, "sha256": None}
    return {"source": Path(checkpoint).name, "synthetic": False, "seed": None, "sha256": info.sha256}


def _copy_tokenizer(tokenizer, root: Path) -> list[dict]:
    entries = []
    for name in TOKENIZER_FILES:
        source = tokenizer.directory / name
        if source.is_file():
            relative = f"{TOKENIZER_DIR}/{name}"
            with atomic_path(root / relative) as temporary:
                shutil.copyfile(source, temporary)
            entries.append(describe_file(root, relative))
    return entries


def _write_reference_weights(model, root: Path) -> None:
    from safetensors.torch import save_file

    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(root / REFERENCE_WEIGHTS) as temporary:
        save_file(state, str(temporary), metadata={"model_id": spec.MODEL_ID})


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


def _tokenizer_entry(tokenizer, files: list[dict]) -> dict:
    return {
        "path": TOKENIZER_DIR,
        "kind": "DistilBertTokenizer (WordPiece, BERT basic tokenization)",
        "demo_vocabulary": tokenizer.is_demo,
        "do_lower_case": tokenizer.do_lower_case,
        "max_length": spec.MAX_TEXT_LENGTH,
        "padding": "max_length",
        "truncation": True,
        "vocab_size": tokenizer.vocab_size,
        "special_ids": {"pad": tokenizer.pad_id, "cls": tokenizer.cls_id, "sep": tokenizer.sep_id, "unk": tokenizer.unk_id},
        "files": files,
    }


def _fused_textual(model, root: Path, timer: StageTimer) -> dict:
    """``textual.fused.onnx`` (ONNX Runtime's fused transformer kernels), or nothing when the fusion falls short:
    it is an optional speed-up, never a reason to fail an export."""
    from export.onnx import graph_io
    from export.onnxruntime_fusion import FUSED_FILE, FusionError, export_fused_textual

    with timer.stage(f"exporting {FUSED_FILE}"):
        try:
            facts = export_fused_textual(model, root / FUSED_FILE)
        except FusionError as exc:
            print(f"  {FUSED_FILE} skipped: {exc}")
            return {}
    encoder = spec.TEXTUAL.name
    return {
        fused_key(encoder, "fp32"): describe_file(
            root, FUSED_FILE, encoder=encoder, precision="fp32", format="onnx", runtime="onnxruntime",
            fused_variant_of=artifact_key(encoder, "fp32"), mask=facts["mask"], deployable=False,
            **graph_io(encoder), export=facts,
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
) -> dict:
    """Write a complete bundle to ``out``; returns its manifest. Synthetic weights and the demo vocabulary by default.

    Stages: model and tokenizer, reference weights, FP32 graphs, FP16 graphs, probe set, activation scan, manifest,
    parity (which marks every graph deployable or not). Raises ExportError before touching anything when ``out``
    exists and ``force`` is not set.
    """
    out = Path(out)
    _check_target(out, force)
    timer = timer or StageTimer()
    staging = out.parent / f".{out.name}{STAGING_PREFIX}{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        manifest = _build(staging, checkpoint, tokenizer, seed, run_parity, timer)
        _replace_directory(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _build(root: Path, checkpoint, tokenizer_source, seed: int, run_parity: bool, timer: StageTimer) -> dict:
    from export.activations import activation_report, format_activation_report
    from export.fp16 import fp16_model
    from export.onnx import export_encoder, graph_io
    from export.probe import write_probe
    from ruclip_tiny.synthetic import load_model
    from ruclip_tiny.tokenizer import load_tokenizer

    with timer.stage("loading the reference model and tokenizer"):
        model = load_model(checkpoint, seed)
        tokenizer = load_tokenizer(tokenizer_source)
    if model.checkpoint_info.synthetic:
        print(f"  SYNTHETIC weights (seed {seed}): this bundle proves the toolchain, its embeddings mean nothing")
    if tokenizer.is_demo:
        print("  demo vocabulary: texts are tokenized with the shipped demo WordPiece vocabulary")
    with timer.stage(f"writing {REFERENCE_WEIGHTS} and the tokenizer"):
        _write_reference_weights(model, root)
        tokenizer_files = _copy_tokenizer(tokenizer, root)

    artifacts = {"reference": describe_file(root, REFERENCE_WEIGHTS, format="safetensors", precision="fp32")}
    variants = {"fp32": model}
    for precision in PRECISIONS:
        if precision not in variants:
            with timer.stage(f"building the {precision} variant"):
                variants[precision] = fp16_model(model)
        for encoder in spec.ENCODERS:
            name = onnx_file(encoder, precision)
            with timer.stage(f"exporting {name}"):
                facts = export_encoder(variants[precision], encoder, root / name, reference=model)
            artifacts[artifact_key(encoder, precision)] = describe_file(
                root, name, encoder=encoder, precision=precision, format="onnx", deployable=False,
                **graph_io(encoder), export=facts,
            )

    artifacts.update(_fused_textual(model, root, timer))

    with timer.stage("writing the probe set and reference outputs"):
        probe = write_probe(model, tokenizer, root)
    with timer.stage("scanning activations against the FP16 range"):
        import numpy as np

        with np.load(root / PROBE_INPUTS, allow_pickle=False) as inputs:
            activations = activation_report(model, tokenizer, inputs["pixels"], inputs["input_ids"], inputs["attention_mask"])
        atomic_write_json(root / "reports" / "activations.json", activations)
    print(format_activation_report(activations))

    manifest = {
        "schema_version": SCHEMA_VERSION,
        "model_id": spec.MODEL_ID,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "synthetic": model.checkpoint_info.synthetic,
        "checkpoint": _checkpoint_entry(model, checkpoint),
        "embedding_dim": spec.EMBED_DIM,
        "logit_scale": float(model.logit_scale.exp()),
        "logit_scale_log": float(model.logit_scale),
        "preprocessing": _preprocessing_entry(),
        "tokenizer": _tokenizer_entry(tokenizer, tokenizer_files),
        "artifacts": artifacts,
        "probe": probe,
        "activations": {"path": "reports/activations.json"},
        "tools": _tool_versions(),
        "export_seconds": dict(timer.seconds),
        "parity": {},
    }
    atomic_write_json(root / MANIFEST, manifest)
    if run_parity:
        from runtime.parity import format_table
        from runtime.parity import run_parity as parity

        with timer.stage("parity of every graph against the reference outputs"):
            report = parity(root, PRECISIONS)
        print(format_table(report))
    from runtime.bundle import Bundle

    bundle = Bundle.load(root)
    bundle.manifest["export_seconds"] = dict(timer.seconds)
    bundle.write_manifest()
    return bundle.manifest
