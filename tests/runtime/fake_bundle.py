"""A tiny bundle with the real encoders' I/O contract, built in seconds with onnx.helper (no torch, no checkpoint).

Graphs (opset 18), 50–100 KB each:
    visual:  pixels float32 [batch,3,224,224] -> mean over H,W -> Sin(x @ W1 + b1) -> @ W2 -> image_features [batch,768]
    textual: input_ids, attention_mask int64 [batch,seq] -> embedding Gather -> masked mean over seq
             -> Sin(x @ W1 + b1) -> @ W2 -> text_features [batch,768]
The ``.fp16`` graphs store their weights in float16 and compute in float16 with float32 I/O (Cast at both ends;
the 50,176-pixel mean stays in float32, as a real mixed-precision graph keeps its large reductions), like the
real FP16 artifacts. Sin of a wide pre-activation (std ~3) makes the output direction sensitive to a 1% weight
change, so a tampered weight shows in the cosine metrics too, not only in the absolute error.
Tokenizer: ``tokenizer/vocab.txt`` with VOCAB ids (special tokens, then ``слово0`` …), so texts run end to end.

Tests use ``build_fake_bundle`` and the tampering helpers below; the probe reference is the fp32 graphs' output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ruclip_tiny import spec
from ruclip_tiny.fileio import atomic_write_json
from runtime import bundle as bundle_layout
from runtime.backends.onnxruntime import OnnxRuntimeEncoder
from runtime.manifest import FileEntry

OPSET = 18
VOCAB = 50
TEXT_WIDTH = 16
HIDDEN = 32
PRE_ACTIVATION_STD = 3.0

# Initializer names, so tests can tamper with one weight by name.
VISUAL_W1 = "visual.w1"
TEXTUAL_W1 = "textual.w1"


def fake_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """float32 weights of both fake encoders, scaled so the pre-activations of Sin have std ~PRE_ACTIVATION_STD."""
    rng = np.random.default_rng(seed)
    # visual: pooled pixels ~N(0,1) in 3 dims; textual: the mean of ~8 unit-variance embeddings has std ~0.35
    return {
        VISUAL_W1: rng.normal(0, PRE_ACTIVATION_STD / np.sqrt(3), (3, HIDDEN)).astype(np.float32),
        "visual.b1": rng.normal(0, 1, HIDDEN).astype(np.float32),
        "visual.w2": rng.normal(0, 1 / np.sqrt(HIDDEN), (HIDDEN, spec.EMBED_DIM)).astype(np.float32),
        "textual.embedding": rng.normal(0, 1, (VOCAB, TEXT_WIDTH)).astype(np.float32),
        TEXTUAL_W1: rng.normal(0, PRE_ACTIVATION_STD / (0.35 * np.sqrt(TEXT_WIDTH)), (TEXT_WIDTH, HIDDEN)).astype(
            np.float32
        ),
        "textual.b1": rng.normal(0, 1, HIDDEN).astype(np.float32),
        "textual.w2": rng.normal(0, 1 / np.sqrt(HIDDEN), (HIDDEN, spec.EMBED_DIM)).astype(np.float32),
    }


def _value_info(tensor: spec.TensorSpec):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
    return helper.make_tensor_value_info(tensor.name, elem, tensor.symbolic_shape)


def _model(encoder: spec.EncoderSpec, nodes: list, initializers: list) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        f"fake_{encoder.name}",
        [_value_info(t) for t in encoder.inputs],
        [_value_info(t) for t in encoder.outputs],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fake_bundle")
    onnx.checker.check_model(model, full_check=True)
    return model


def _compute_type(precision: str) -> tuple[np.dtype, int]:
    if precision == "fp16":
        return np.dtype(np.float16), TensorProto.FLOAT16
    return np.dtype(np.float32), TensorProto.FLOAT


def visual_graph(
    weights: dict[str, np.ndarray], precision: str, encoder: spec.EncoderSpec = spec.VISUAL
) -> onnx.ModelProto:
    """The fake image encoder; ``encoder``: the I/O it declares (another one makes a graph that breaks the spec)."""
    dtype, elem = _compute_type(precision)
    inits = [numpy_helper.from_array(weights[n].astype(dtype), n) for n in (VISUAL_W1, "visual.b1", "visual.w2")]
    inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "visual.hw_axes"))
    nodes = [helper.make_node("ReduceMean", ["pixels", "visual.hw_axes"], ["pooled32"], keepdims=0)]
    nodes.append(helper.make_node("Cast", ["pooled32"], ["pooled"], to=elem))
    nodes += [
        helper.make_node("MatMul", ["pooled", VISUAL_W1], ["z0"]),
        helper.make_node("Add", ["z0", "visual.b1"], ["z"]),
        helper.make_node("Sin", ["z"], ["h"]),
        helper.make_node("MatMul", ["h", "visual.w2"], ["out"]),
        helper.make_node("Cast", ["out"], ["image_features"], to=TensorProto.FLOAT),
    ]
    return _model(encoder, nodes, inits)


def textual_graph(
    weights: dict[str, np.ndarray], precision: str, encoder: spec.EncoderSpec = spec.TEXTUAL
) -> onnx.ModelProto:
    """The fake text encoder; ``encoder``: the I/O it declares (another one makes a graph that breaks the spec)."""
    dtype, elem = _compute_type(precision)
    names = ("textual.embedding", TEXTUAL_W1, "textual.b1", "textual.w2")
    inits = [numpy_helper.from_array(weights[n].astype(dtype), n) for n in names]
    inits += [
        numpy_helper.from_array(np.array([1], np.int64), "textual.seq_axis"),
        numpy_helper.from_array(np.array([2], np.int64), "textual.last_axis"),
    ]
    nodes = [
        helper.make_node("Gather", ["textual.embedding", "input_ids"], ["tokens"]),  # [B,S,D]
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=elem),  # [B,S]
        helper.make_node("Unsqueeze", ["mask", "textual.last_axis"], ["mask3"]),  # [B,S,1]
        helper.make_node("Mul", ["tokens", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "textual.seq_axis"], ["summed"], keepdims=0),  # [B,D]
        helper.make_node("ReduceSum", ["mask", "textual.seq_axis"], ["count"], keepdims=1),  # [B,1]
        helper.make_node("Div", ["summed", "count"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", TEXTUAL_W1], ["z0"]),
        helper.make_node("Add", ["z0", "textual.b1"], ["z"]),
        helper.make_node("Sin", ["z"], ["h"]),
        helper.make_node("MatMul", ["h", "textual.w2"], ["out"]),
        helper.make_node("Cast", ["out"], ["text_features"], to=TensorProto.FLOAT),
    ]
    return _model(encoder, nodes, inits)


def fake_probe(images: int, texts: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Probe inputs as ``probe/inputs.npz`` holds them.

    pixels float32 [images,3,224,224]: a per-image colour plus noise, so the pooled colours differ between images.
    input_ids, attention_mask int64 [texts,77]: 3..12 real tokens, then padding (id 0, mask 0).
    """
    rng = np.random.default_rng(seed + 1)
    size = spec.IMAGE_SIZE
    colours = rng.normal(0, 1, (images, 3, 1, 1))
    pixels = (colours + 0.5 * rng.normal(0, 1, (images, 3, size, size))).astype(np.float32)
    lengths = rng.integers(3, 13, texts)
    input_ids = np.zeros((texts, spec.MAX_TEXT_LENGTH), np.int64)
    attention_mask = np.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = rng.integers(1, VOCAB, length)
        attention_mask[row, :length] = 1
    return {
        "pixels": pixels,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "image_names": np.array([f"image{i}.jpg" for i in range(images)]),
        "texts": np.array([f"подпись {i}" for i in range(texts)]),
    }


# The fake tokenizer: special tokens first, then plain words, VOCAB ids in all (the fake embedding's rows).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
FAKE_WORDS = tuple(f"слово{i}" for i in range(VOCAB - len(SPECIAL_TOKENS)))
# exp of the original module's initial parameter (1/0.07): a plausible multiplier
LOGIT_SCALE = float(np.exp(spec.LOGIT_SCALE_INIT))


def write_tokenizer(root: Path) -> list[dict]:
    """``tokenizer/vocab.txt`` (VOCAB ids) and ``tokenizer_config.json`` (cased); returns their manifest entries."""
    directory = root / bundle_layout.TOKENIZER_DIR
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join([*SPECIAL_TOKENS, *FAKE_WORDS]) + "\n", encoding="utf-8")
    (directory / "tokenizer_config.json").write_text('{"do_lower_case": false}\n', encoding="utf-8")
    return [
        bundle_layout.describe_file(root, f"{bundle_layout.TOKENIZER_DIR}/{name}")
        for name in ("vocab.txt", "tokenizer_config.json")
    ]


def _graph_entry(root: Path, encoder: str, precision: str, deployable: bool) -> dict:
    encoder_spec = spec.ENCODERS[encoder]
    return bundle_layout.describe_file(
        root,
        bundle_layout.onnx_file(encoder, precision),
        encoder=encoder,
        precision=precision,
        format="onnx",
        inputs=[{"name": t.name, "dtype": t.dtype, "shape": t.symbolic_shape} for t in encoder_spec.inputs],
        outputs=[{"name": t.name, "dtype": t.dtype, "shape": t.symbolic_shape} for t in encoder_spec.outputs],
        deployable=deployable,
    )


def build_fake_bundle(
    root: str | Path,
    images: int = 6,
    texts: int = 8,
    seed: int = 0,
    precisions: tuple[str, ...] = bundle_layout.PRECISIONS,
    deployable: bool = True,
) -> Path:
    """Write a fake bundle (four graphs, tokenizer, probe, manifest with sha256 entries) into ``root``; return
    ``root``. Its graphs are marked ``deployable`` (their parity passes: the probe reference is the fp32 graphs'
    output)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    weights = fake_weights(seed)
    builders = {"visual": visual_graph, "textual": textual_graph}
    for precision in precisions:
        for encoder, build in builders.items():
            onnx.save(build(weights, precision), str(root / bundle_layout.onnx_file(encoder, precision)))

    probe = fake_probe(images, texts, seed)
    (root / bundle_layout.PROBE_INPUTS).parent.mkdir(parents=True, exist_ok=True)
    np.savez(root / bundle_layout.PROBE_INPUTS, **probe)
    # the reference is what the fp32 graphs compute (a real bundle's comes from the PyTorch model)
    reference = {}
    for encoder_spec in (spec.VISUAL, spec.TEXTUAL):
        path = root / f".reference_{encoder_spec.name}.onnx"
        onnx.save(builders[encoder_spec.name](weights, "fp32"), str(path))
        feeds = {t.name: probe[t.name] for t in encoder_spec.inputs}
        reference[encoder_spec.outputs[0].name] = OnnxRuntimeEncoder(path).run(feeds)
        path.unlink()
    np.savez(root / bundle_layout.PROBE_REFERENCE, **reference)
    tokenizer_files = write_tokenizer(root)

    manifest = {
        "schema_version": bundle_layout.SCHEMA_VERSION,
        "model_id": "fake-ruclip-tiny",
        "synthetic": True,
        "checkpoint": {"synthetic": True, "seed": seed},
        "embedding_dim": spec.EMBED_DIM,
        "logit_scale": LOGIT_SCALE,
        "tokenizer": {"path": bundle_layout.TOKENIZER_DIR, "files": tokenizer_files},
        "probe": {
            "images": images,
            "texts": texts,
            "files": [
                bundle_layout.describe_file(root, relative)
                for relative in (bundle_layout.PROBE_INPUTS, bundle_layout.PROBE_REFERENCE)
            ],
        },
        "artifacts": {
            bundle_layout.artifact_key(encoder, precision): _graph_entry(root, encoder, precision, deployable)
            for precision in precisions
            for encoder in builders
        },
    }
    atomic_write_json(root / bundle_layout.MANIFEST, manifest)
    return root


def scale_initializer(graph_path: str | Path, name: str, factor: float) -> None:
    """Multiply one initializer of a graph by ``factor`` in place, keeping its dtype (a subtly wrong export)."""
    model = onnx.load(str(graph_path))
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name == name:
            array = numpy_helper.to_array(tensor)
            scaled = (array.astype(np.float64) * factor).astype(array.dtype)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(scaled, name))
            onnx.save(model, str(graph_path))
            return
    raise KeyError(f"{graph_path} has no initializer {name!r}")


def refresh_manifest_entry(root: str | Path, key: str) -> None:
    """Re-describe one artifact (size, sha256) so a changed file passes ``Bundle.verify``."""
    loaded = bundle_layout.Bundle.load(root)
    entry = loaded.artifact(key)
    measured = FileEntry.describe(loaded.root, entry.path)
    entry.size, entry.sha256 = measured.size, measured.sha256
    loaded.write_manifest()


def flip_byte(path: str | Path, offset: int | None = None) -> None:
    """Invert one byte of a file (the middle one by default): corruption that keeps the size."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def add_fused_textual(root: str | Path, precision: str = "fp32", deployable: bool = True) -> str:
    """Record the fp32 text graph again as the fused text graph (``textual.fused.onnx``, same I/O and numbers, as
    ONNX Runtime's fusion leaves them); returns its manifest key."""
    root = Path(root)
    key = bundle_layout.fused_key(spec.TEXTUAL.name, precision)
    source = root / bundle_layout.onnx_file(spec.TEXTUAL.name, precision)
    target = root / f"{spec.TEXTUAL.name}.fused.onnx"
    target.write_bytes(source.read_bytes())
    loaded = bundle_layout.Bundle.load(root)
    main = bundle_layout.artifact_key(spec.TEXTUAL.name, precision)
    measured = FileEntry.describe(root, target.name)
    loaded.artifacts[key] = dataclasses.replace(
        loaded.artifact(main), path=measured.path, size=measured.size, sha256=measured.sha256,
        fused_variant_of=main, deployable=deployable,
    )
    loaded.write_manifest()
    return key


def edit_manifest(root: str | Path, edit) -> None:
    """Apply ``edit`` (a function changing the parsed manifest in place) to ``root``'s manifest.json, without any
    validation: how tests write a manifest no command would accept."""
    path = Path(root) / bundle_layout.MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    edit(manifest)
    path.write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")


def refresh_probe_entries(root: str | Path) -> None:
    """Re-describe the probe files (size, sha256) in the manifest, so a changed probe passes the sha256 check."""
    loaded = bundle_layout.Bundle.load(root)
    loaded.manifest.probe.files = [FileEntry.describe(loaded.root, entry.path) for entry in loaded.manifest.probe.files]
    loaded.write_manifest()


def snapshot(root: str | Path) -> dict[str, tuple[str | None, int]]:
    """Every path under ``root`` (and ``root`` itself) -> (sha256 of its bytes, None for a directory; mtime in ns):
    equal snapshots before and after a command prove it wrote nothing there."""
    root = Path(root)
    state = {}
    for path in [root, *sorted(root.rglob("*"))]:
        digest = None if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        state[str(path.relative_to(root))] = (digest, path.stat().st_mtime_ns)
    return state
