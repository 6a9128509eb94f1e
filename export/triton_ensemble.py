"""The python-backend models and ensembles of a Triton repository: raw text and encoded image bytes in, normalised
embeddings out.

    ruclip_tiny_tokenize    TEXT BYTES [1] -> input_ids, attention_mask INT64 [-1]   (padded to a length bucket)
    ruclip_tiny_preprocess  IMAGE BYTES [1] -> pixels FP32 [3, 224, 224]
    ruclip_tiny_normalize   features FP32 [768] -> EMBEDDING FP32 [768]              (unit L2 rows)
    ruclip_tiny_text        ensemble: tokenize -> ruclip_tiny_textual -> normalize   TEXT -> EMBEDDING
    ruclip_tiny_image       ensemble: preprocess -> ruclip_tiny_visual -> normalize  IMAGE -> EMBEDDING

Each model's ``model.py`` is ``triton_models/python_path.py`` (puts the ``python_path`` parameter's directories
first on ``sys.path``) followed by its template from ``triton_models/``; the templates import only numpy,
onnxruntime, ``triton_python_backend_utils`` and the torch-free runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ruclip_tiny import spec
from ruclip_tiny.transform import DEFAULT_MAX_IMAGE_PIXELS

TEMPLATES = Path(__file__).with_name("triton_models")
TOKENIZE, PREPROCESS, NORMALIZE = "ruclip_tiny_tokenize", "ruclip_tiny_preprocess", "ruclip_tiny_normalize"
TEXT_ENSEMBLE, IMAGE_ENSEMBLE = "ruclip_tiny_text", "ruclip_tiny_image"
# Triton batches only requests of equal shape: each text request is padded to the smallest bucket that holds its
# longest text (the [CLS] feature ignores masked positions), so texts of similar length batch together.
TEXT_LENGTH_BUCKETS = (8, 16, 32, spec.MAX_TEXT_LENGTH)
# The HTTP server's default (runtime.serve.settings.ServerSettings.max_image_bytes); pixels: DEFAULT_MAX_IMAGE_PIXELS.
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024


class Enum(str):
    """A protobuf enum value: written bare (TYPE_FP32), not quoted."""


@dataclass
class PythonModel:
    """A python-backend model: ``config`` (a dict for ``config.pbtxt``), ``code`` (its model.py) and ``files``
    (name in ``1/`` -> source file or directory)."""

    name: str
    config: dict
    code: str
    files: dict[str, Path] = field(default_factory=dict)


def model_code(template: str) -> str:
    """The model.py of a template in ``triton_models/``: the sys.path prologue, then the template."""
    prologue = (TEMPLATES / "python_path.py").read_text(encoding="utf-8")
    return prologue + "\n\n" + (TEMPLATES / template).read_text(encoding="utf-8")


def _tensor(name: str, dtype: str, dims: list[int]) -> dict:
    return {"name": name, "data_type": Enum(dtype), "dims": dims}


def _parameters(values: dict[str, str]) -> list[dict]:
    return [{"key": key, "value": {"string_value": value}} for key, value in values.items()]


def python_config(name: str, inputs: list[dict], outputs: list[dict], max_batch: int, python_path: list[str],
                  instance_count: int = 1, parameters: dict[str, str] | None = None,
                  dynamic_batching: dict | None = None) -> dict:
    """The config of a python-backend model (CPU instances; ``python_path`` as a JSON list parameter)."""
    config: dict = {"name": name, "backend": "python", "max_batch_size": max_batch, "input": inputs,
                    "output": outputs}
    if dynamic_batching is not None:
        config["dynamic_batching"] = dynamic_batching
    config["instance_group"] = [{"count": instance_count, "kind": Enum("KIND_CPU")}]
    config["parameters"] = _parameters({"python_path": json.dumps(list(python_path)), **(parameters or {})})
    return config


def preprocessing_models(tokenizer_dir: Path, max_batch: int, python_path: list[str], instance_count: int = 1,
                         max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                         max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> list[PythonModel]:
    """tokenize (with the bundle's ``tokenizer/`` copied into ``1/tokenizer``), preprocess and normalize."""
    dim = spec.EMBED_DIM
    tokenize = python_config(
        TOKENIZE, [_tensor("TEXT", "TYPE_STRING", [1])],
        [_tensor("input_ids", "TYPE_INT64", [-1]), _tensor("attention_mask", "TYPE_INT64", [-1])],
        max_batch, python_path, instance_count,
        {"length_buckets": ",".join(str(b) for b in TEXT_LENGTH_BUCKETS)})
    preprocess = python_config(
        PREPROCESS, [_tensor("IMAGE", "TYPE_STRING", [1])],
        [_tensor("pixels", "TYPE_FP32", [3, spec.IMAGE_SIZE, spec.IMAGE_SIZE])], max_batch, python_path,
        instance_count, {"max_image_bytes": str(max_image_bytes), "max_image_pixels": str(max_image_pixels)})
    normalize = python_config(
        NORMALIZE, [_tensor("features", "TYPE_FP32", [dim])], [_tensor("EMBEDDING", "TYPE_FP32", [dim])],
        max_batch, python_path, instance_count)
    return [
        PythonModel(TOKENIZE, tokenize, model_code("tokenize_texts.py"), {"tokenizer": tokenizer_dir}),
        PythonModel(PREPROCESS, preprocess, model_code("preprocess_images.py")),
        PythonModel(NORMALIZE, normalize, model_code("normalize_features.py")),
    ]


def python_encoder_config(encoder: spec.EncoderSpec, name: str, inputs: list[dict], outputs: list[dict],
                          max_batch: int, python_path: list[str], instance_count: int,
                          max_queue_delay_us: int) -> dict:
    """An encoder run as the bundle's ONNX graph in onnxruntime inside the python backend."""
    return python_config(name, inputs, outputs, max_batch, python_path, instance_count,
                         {"encoder": encoder.name},
                         dynamic_batching={"max_queue_delay_microseconds": max_queue_delay_us})


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict:
    return {
        "model_name": model,
        "model_version": -1,
        "input_map": [{"key": k, "value": v} for k, v in inputs.items()],
        "output_map": [{"key": k, "value": v} for k, v in outputs.items()],
    }


def ensemble_configs(textual: str, visual: str, max_batch: int) -> list[dict]:
    """``ruclip_tiny_text`` and ``ruclip_tiny_image``: raw input -> preprocessing -> encoder -> normalize."""
    dim = spec.EMBED_DIM
    embedding = [_tensor("EMBEDDING", "TYPE_FP32", [dim])]
    text_out = spec.TEXTUAL.outputs[0].name
    image_out = spec.VISUAL.outputs[0].name
    text = {
        "name": TEXT_ENSEMBLE, "platform": "ensemble", "max_batch_size": max_batch,
        "input": [_tensor("TEXT", "TYPE_STRING", [1])], "output": embedding,
        "ensemble_scheduling": {"step": [
            _step(TOKENIZE, {"TEXT": "TEXT"}, {"input_ids": "input_ids", "attention_mask": "attention_mask"}),
            _step(textual, {"input_ids": "input_ids", "attention_mask": "attention_mask"}, {text_out: text_out}),
            _step(NORMALIZE, {"features": text_out}, {"EMBEDDING": "EMBEDDING"}),
        ]},
    }
    image = {
        "name": IMAGE_ENSEMBLE, "platform": "ensemble", "max_batch_size": max_batch,
        "input": [_tensor("IMAGE", "TYPE_STRING", [1])], "output": embedding,
        "ensemble_scheduling": {"step": [
            _step(PREPROCESS, {"IMAGE": "IMAGE"}, {"pixels": "pixels"}),
            _step(visual, {"pixels": "pixels"}, {image_out: image_out}),
            _step(NORMALIZE, {"features": image_out}, {"EMBEDDING": "EMBEDDING"}),
        ]},
    }
    return [text, image]
