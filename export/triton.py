"""A Triton Inference Server model repository from a bundle: one model per encoder, configs from ``ruclip_tiny.spec``.

Layout written (``ruclip_tiny_visual`` and ``ruclip_tiny_textual``)::

    REPO/README.md                                  how to start Triton on it and what clients send
    REPO/ruclip_tiny_visual/config.pbtxt            platform, max_batch_size, I/O, dynamic_batching, instance_group
    REPO/ruclip_tiny_visual/1/model.onnx            onnxruntime: the bundle's graph of the chosen precision
    REPO/ruclip_tiny_visual/1/model_sm90.plan       tensorrt: one plan per compute capability, named in
                                                    cc_model_filenames {key: "9.0" value: "model_sm90.plan"}

Names, data types and dims come from the one I/O description (``spec.ENCODERS``): the batch dimension becomes
``max_batch_size`` (so it is not listed in ``dims``), other dynamic dimensions are -1. The repository is assembled in
a staging directory beside ``out`` and renamed into place, so a failed write never leaves a half repository. It
lists its files in ``.ruclip-tiny-repository.json``: ``force`` replaces a directory only when that listing is there
and the directory holds nothing else (what Triton writes into a repository it served, ``__pycache__/``, aside).
Besides the encoders: python-backend preprocessing models and the ensembles ``ruclip_tiny_text`` /
``ruclip_tiny_image`` that take raw texts and encoded images (``export.triton_ensemble``).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from export.triton_ensemble import (  # noqa: I001 — the Enum alias keeps its own line
    IMAGE_ENSEMBLE,
    NORMALIZE,
    PREPROCESS,
    TEXT_ENSEMBLE,
    TEXT_LENGTH_BUCKETS,
    TOKENIZE,
    PythonModel,
    ensemble_configs,
    model_code,
    preprocessing_models,
    python_encoder_config,
)
from export.triton_ensemble import Enum as _Enum
from ruclip_tiny import spec
from ruclip_tiny.errors import RuclipTinyError
from ruclip_tiny.fileio import (
    STAGING_OWNER,
    Ownership,
    atomic_write_json,
    check_target,
    make_staging_directory,
    remove_stale_staging,
    replace_directory,
)
from runtime.bundle import TOKENIZER_DIR, Bundle
from runtime.manifest import ENGINES_DIR, Artifact, NotDeployableError, artifact_key, onnx_file, parse_engine_key

# What runs the encoders: Triton's platform name (python: the python backend running the ONNX graphs in onnxruntime).
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan", "python": "python"}
DEFAULT_PRECISION = {"onnxruntime": "fp32", "tensorrt": "fp16", "python": "fp32"}
INSTANCE_KINDS = {"auto": "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}
MODEL_PREFIX = "ruclip_tiny_"
VERSION = "1"
README = "README.md"
# The repository's list of its own files: what tells a repository this module wrote from any other directory.
LISTING = ".ruclip-tiny-repository.json"
LISTING_WRITER = "ruclip-tiny triton-repo"
# Written into an ensemble's (otherwise empty) version directory, so that the listing names it.
ENSEMBLE_MARKER = ".ensemble"


class TritonRepoError(RuclipTinyError):
    """A Triton repository that cannot be written from this bundle (missing engines, mismatched graph, ...)."""


def model_name(encoder: str) -> str:
    """Triton model name of an encoder: ``ruclip_tiny_visual``."""
    return f"{MODEL_PREFIX}{encoder}"


def compute_capability_key(cc: str) -> str:
    """``cc_model_filenames`` key of an ``sm`` number as Triton writes it (``major.minor``): "90" -> "9.0",
    "120" -> "12.0"."""
    if not cc.isdigit() or len(cc) < 2:
        raise TritonRepoError(f"compute capability {cc!r} is not like 86 or 90 (sm_86, sm_90)")
    return f"{cc[:-1]}.{cc[-1]}"


# --- config.pbtxt ----------------------------------------------------------------------------------------------------


def _scalar(value) -> str:
    if isinstance(value, _Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def _pbtxt(message: dict, indent: int = 0) -> list[str]:
    """Protobuf text format of a nested dict: dicts are messages, lists of dicts repeated messages, lists of
    scalars repeated scalars."""
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", *_pbtxt(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{key} [")
            for index, item in enumerate(value):
                comma = "," if index < len(value) - 1 else ""
                lines += [f"{pad}  {{", *_pbtxt(item, indent + 2), f"{pad}  }}{comma}"]
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def _tensor_config(tensor: spec.TensorSpec) -> dict:
    if not tensor.shape or tensor.shape[0] is not spec.BATCH:
        raise TritonRepoError(f"{tensor.name}: the first dimension must be the batch to use max_batch_size")
    return {
        "name": tensor.name,
        "data_type": _Enum(TRITON_DTYPES[tensor.dtype]),
        "dims": [-1 if isinstance(dim, spec.Dim) else dim for dim in tensor.shape[1:]],
    }


def model_config(
    encoder: spec.EncoderSpec,
    platform: str,
    max_batch: int,
    max_queue_delay_us: int = 1000,
    instance_count: int = 1,
    instance_kind: str = "auto",
    default_model_filename: str | None = None,
    cc_model_filenames: dict[str, str] | None = None,
) -> str:
    """The ``config.pbtxt`` text of one encoder. platform: "onnxruntime" or "tensorrt"; cc_model_filenames:
    ``{"9.0": "model_sm90.plan"}``."""
    config: dict = {
        "name": model_name(encoder.name),
        "platform": PLATFORMS[platform],
        "max_batch_size": max_batch,
        "input": [_tensor_config(t) for t in encoder.inputs],
        "output": [_tensor_config(t) for t in encoder.outputs],
        "dynamic_batching": {"max_queue_delay_microseconds": max_queue_delay_us},
        "instance_group": [{"count": instance_count, "kind": _Enum(INSTANCE_KINDS[instance_kind])}],
    }
    if default_model_filename:
        config["default_model_filename"] = default_model_filename
    if cc_model_filenames:
        config["cc_model_filenames"] = [{"key": k, "value": v} for k, v in sorted(cc_model_filenames.items())]
    return "\n".join(_pbtxt(config)) + "\n"


def _config_text(config: dict) -> str:
    return "\n".join(_pbtxt(config)) + "\n"


def _python_models(bundle: Bundle, max_batch: int, python_path: list[str],
                   instance_count: int) -> list[TritonModel]:
    """The preprocessing python models and the two ensembles over the encoder models."""
    preprocessing: list[PythonModel] = preprocessing_models(
        bundle.path(TOKENIZER_DIR), max_batch, python_path, instance_count)
    models = [TritonModel(m.name, "", _config_text(m.config), m.files, code=m.code) for m in preprocessing]
    for config in ensemble_configs(model_name("textual"), model_name("visual"), max_batch):
        models.append(TritonModel(config["name"], "", _config_text(config)))
    return models


# --- what goes in: graphs and plans -----------------------------------------------------------------------------------


@dataclass
class TritonModel:
    """One model of the repository: its name, encoder ("" for the preprocessing models and ensembles), config text,
    ``files`` (name in ``1/`` -> source file or directory) and ``code`` (its ``1/model.py``, python models)."""

    name: str
    encoder: str
    config: str
    files: dict[str, Path] = field(default_factory=dict)
    code: str | None = None
    synthetic: bool = False
    compute_capabilities: list[str] = field(default_factory=list)


def check_onnx_io(path: Path, encoder: spec.EncoderSpec) -> None:
    """Refuse a graph whose inputs/outputs differ from the spec: the export's one I/O check
    (``export.onnx.check_graph_io``)."""
    from export.onnx import GraphCheckError, check_graph_io

    try:
        check_graph_io(path, encoder.name)
    except GraphCheckError as exc:
        raise TritonRepoError(f"{exc}; re-export the bundle") from None


def _checked_artifact(bundle: Bundle, key: str, allow: bool) -> Artifact:
    """The artifact ``key``, refused as the embedder refuses it: not deployable (the same message), or a file that
    differs from the manifest."""
    try:
        bundle.check_deployable([key], allow)
    except NotDeployableError as exc:
        raise TritonRepoError(str(exc)) from None
    entry = bundle.artifact(key)
    bundle.verify_file(key, entry)
    return entry


def _onnx_models(bundle: Bundle, precision: str, options: dict, allow: bool,
                 python_path: list[str] | None = None) -> list[TritonModel]:
    """The encoders as the bundle's graphs: in Triton's onnxruntime backend, or (``python_path`` given) in the python
    backend running onnxruntime (``triton_models/onnx_encoder.py``)."""
    models = []
    for encoder in spec.ENCODERS.values():
        key = artifact_key(encoder.name, precision)
        if key not in bundle.artifacts:
            raise TritonRepoError(f"bundle {bundle.root} has no {key} graph ({onnx_file(encoder.name, precision)}); "
                                  f"re-export it with: ruclip-tiny export --out {bundle.root} --force")
        source = bundle.path(_checked_artifact(bundle, key, allow).path)
        check_onnx_io(source, encoder)
        if python_path is None:
            config = model_config(encoder, "onnxruntime", default_model_filename="model.onnx", **options)
            models.append(TritonModel(model_name(encoder.name), encoder.name, config, {"model.onnx": source}))
            continue
        python = python_encoder_config(
            encoder, model_name(encoder.name), [_tensor_config(t) for t in encoder.inputs],
            [_tensor_config(t) for t in encoder.outputs], options["max_batch"], python_path,
            options["instance_count"], options["max_queue_delay_us"])
        models.append(TritonModel(model_name(encoder.name), encoder.name, _config_text(python),
                                  {"model.onnx": source}, code=model_code("onnx_encoder.py")))
    return models


def engine_versions(bundle: Bundle, precision: str) -> dict[str, dict[str, dict[str, str]]]:
    """``{trt_version: {cc: {encoder: engine key}}}`` of the ``precision`` engines the manifest lists (the keys
    ``build-engines`` records: ``engines/<trt-version>_sm<cc>/<encoder>.<precision>``)."""
    found: dict[str, dict[str, dict[str, str]]] = {}
    for key in bundle.artifacts:
        parsed = parse_engine_key(key)
        if parsed is not None and parsed[3] == precision:
            version, capability, encoder, _ = parsed
            found.setdefault(version, {}).setdefault(capability, {})[encoder] = key
    return found


def _plan_models(bundle: Bundle, precision: str, trt_version: str | None, options: dict, allow: bool
                 ) -> list[TritonModel]:
    build = f"build them with: ruclip-tiny build-engines {bundle.root} (on each GPU model you deploy to)"
    versions = engine_versions(bundle, precision)
    if not versions:
        raise TritonRepoError(f"bundle {bundle.root} lists no {precision} TensorRT engines in its manifest; {build}, "
                              "or write an onnxruntime repository (--platform onnxruntime)")
    if trt_version is None:
        if len(versions) > 1:
            raise TritonRepoError(f"bundle {bundle.root} has engines for TensorRT {', '.join(sorted(versions))}; pick "
                                  "the one your Triton release ships with --trt-version")
        trt_version = next(iter(versions))
    if trt_version not in versions:
        raise TritonRepoError(f"bundle {bundle.root} has no engines for TensorRT {trt_version} (it has: "
                              f"{', '.join(sorted(versions))}); {build}")
    models = []
    for encoder in spec.ENCODERS.values():
        files, cc_names = {}, {}
        for cc, keys in sorted(versions[trt_version].items()):
            if encoder.name not in keys:
                continue
            name = f"model_sm{cc}.plan"
            files[name] = bundle.path(_checked_artifact(bundle, keys[encoder.name], allow).path)
            cc_names[compute_capability_key(cc)] = name
        if not files:
            raise TritonRepoError(f"bundle {bundle.root} has no {precision} {encoder.name} engine for TensorRT "
                                  f"{trt_version} ({encoder.name}.{precision}.plan in "
                                  f"{ENGINES_DIR}/{trt_version}_sm*/); {build}")
        config = model_config(encoder, "tensorrt", cc_model_filenames=cc_names, **options)
        models.append(TritonModel(model_name(encoder.name), encoder.name, config, files,
                                  compute_capabilities=sorted(cc_names, key=float)))
    return models


# --- the README inside the repository --------------------------------------------------------------------------------


def repository_readme(bundle: Bundle, models: list[TritonModel], platform: str, precision: str, max_batch: int,
                      synthetic: bool) -> str:
    inputs = []
    for model in models:
        if not model.encoder:
            continue
        encoder = spec.ENCODERS[model.encoder]
        for kind, tensors in (("input", encoder.inputs), ("output", encoder.outputs)):
            for tensor in tensors:
                shape = ", ".join(str(d.name if isinstance(d, spec.Dim) else d) for d in tensor.shape)
                dtype = TRITON_DTYPES[tensor.dtype]
                inputs.append(f"| {model.name} | {kind} | `{tensor.name}` | {dtype} | [{shape}] |")
    plans = ""
    if platform == "tensorrt":
        ccs = sorted({cc for model in models for cc in model.compute_capabilities}, key=float)
        plans = ("\nTensorRT plans run only on the GPU architectures they were built for and only with the TensorRT "
                 "version of the Triton release they were built with; this repository has plans for compute "
                 f"capability {', '.join(ccs)}. Build plans for another GPU with "
                 f"`ruclip-tiny build-engines {bundle.root}` on it and write the repository again.\n")
    warning = ("\n**SYNTHETIC weights**: this repository was written from a bundle exported from synthetic weights. "
               "It proves the deployment chain; its embeddings mean nothing.\n" if synthetic else "")
    buckets = ", ".join(str(b) for b in TEXT_LENGTH_BUCKETS)
    start = ("""On a CPU, from a ruclip-tiny checkout (a real `tritonserver` 2.51 from the `nvidia-pytriton` wheel,
python backend only; the python models' dependencies from `scripts/triton_python_deps.sh DIR`, passed to
`ruclip-tiny triton-repo --python-path DIR`):

    scripts/triton_local.sh /path/to/this/repository --http-port 8000 --grpc-port 8001
""" if platform == "python" else "") + ("""
In NVIDIA's container on GPUs (`--platform tensorrt`: pick the release whose TensorRT built the plans; its Python
must have `pip install ruclip-tiny` for the python models, or write the repository with `--python-path`):

    docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 \\
        -v "$PWD":/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
        sh -c "pip install ruclip-tiny && tritonserver --model-repository=/models"
""" if platform != "python" else "")
    return f"""# ruclip-tiny Triton model repository

Written by `ruclip-tiny triton-repo` from `{bundle.root}` ({platform}, {precision}).
{warning}
## Start Triton on it

    tritonserver --model-repository=/path/to/this/repository

{start}
Check: `curl localhost:8000/v2/health/ready` and `curl localhost:8000/v2/models/{TEXT_ENSEMBLE}/config`.
{plans}
## What clients send

Raw inputs, to the ensembles (what most clients want):

| model | input | output |
| --- | --- | --- |
| {TEXT_ENSEMBLE} | `TEXT` BYTES [n, 1]: UTF-8 texts | `EMBEDDING` FP32 [n, 768], unit rows |
| {IMAGE_ENSEMBLE} | `IMAGE` BYTES [n, 1]: encoded images (JPEG, PNG, WebP…) | `EMBEDDING` FP32 [n, 768], unit rows |

Each ensemble runs: preprocessing (python backend: `{TOKENIZE}` with the runtime's tokenizer, or `{PREPROCESS}` with
the Embedder's image path and the server's limits as parameters `max_image_bytes`, `max_image_pixels`), the encoder,
then `{NORMALIZE}`, which L2-normalises each row exactly as the Embedder does (`runtime.embedder.l2_normalize`): the
embeddings equal `Embedder.encode_texts` / `encode_images`. Cosine similarity is their dot product; zero-shot
scores are `softmax(logit_scale * cosine)` with the `logit_scale` of the bundle's `manifest.json`. A broken image
fails its own request only.

Length buckets: Triton batches only requests of equal shape, so `{TOKENIZE}` pads each request to the smallest of
{buckets} tokens that holds its longest text (the [CLS] feature ignores padding): texts of similar length batch
together on the encoder. Texts longer than 77 tokens are cut, as the original model cut them.

The encoders can be called directly (raw 768-d features, not normalised; both batch dynamically up to {max_batch}
rows, `max_batch_size` being the batch dimension):

| model | kind | tensor | data type | shape |
| --- | --- | --- | --- | --- |
{chr(10).join(inputs)}

Example (Python, `pip install tritonclient[http]`):

    import numpy as np, tritonclient.http as http

    client = http.InferenceServerClient("localhost:8000")
    texts = http.InferInput("TEXT", [2, 1], "BYTES")
    texts.set_data_from_numpy(np.array([["кошка".encode()], ["собака".encode()]], dtype=object))
    text = client.infer("{TEXT_ENSEMBLE}", [texts]).as_numpy("EMBEDDING")
    image = http.InferInput("IMAGE", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[open("cat.jpg", "rb").read()]], dtype=object))
    cat = client.infer("{IMAGE_ENSEMBLE}", [image]).as_numpy("EMBEDDING")
    print(cat @ text.T)  # cosine similarities
"""


# --- writing ---------------------------------------------------------------------------------------------------------


def repository_files(root: Path) -> set[str]:
    """The files ``root``'s listing names as the repository's own (the listing included); raises ValueError when
    ``root`` was not written by this module."""
    path = Path(root) / LISTING
    try:
        listing = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"it has no {LISTING}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"its {LISTING} cannot be read as JSON") from None
    if not isinstance(listing, dict) or listing.get("written_by") != LISTING_WRITER:
        raise ValueError(f"its {LISTING} was not written by {LISTING_WRITER}")
    files = listing.get("files")
    if not isinstance(files, list):
        raise ValueError(f"its {LISTING} was not written by {LISTING_WRITER}")
    return {LISTING} | {str(PurePosixPath(f)) for f in files if isinstance(f, str)}


def _written_by_triton(relative: PurePosixPath) -> bool:
    # The python backend compiles a model's model.py into __pycache__/ next to it when Triton loads it.
    return "__pycache__" in relative.parts


REPOSITORY_OWNERSHIP = Ownership(
    noun="Triton repository", command=LISTING_WRITER, listed_files=repository_files, generated=_written_by_triton,
    error=TritonRepoError,
)


def _write_listing(root: Path) -> None:
    files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.name not in (LISTING, STAGING_OWNER)
    )
    atomic_write_json(root / LISTING, {"written_by": LISTING_WRITER, "files": files})


def write_triton_repository(
    bundle: str | os.PathLike | Bundle,
    out: str | os.PathLike,
    platform: str = "onnxruntime",
    precision: str | None = None,
    max_batch: int = 64,
    max_queue_delay_us: int = 1000,
    instance_count: int = 1,
    instance_kind: str | None = None,
    trt_version: str | None = None,
    force: bool = False,
    allow_not_deployable: bool = False,
    python_path: list[str] | tuple[str, ...] = (),
) -> list[TritonModel]:
    """Write the repository for ``bundle`` to ``out`` (atomically); returns its models.

    platform: "onnxruntime" (the bundle's ONNX graphs), "tensorrt" (the engines its manifest lists,
    ``engines/<trt>_sm<cc>/`` plans, one per compute capability) or "python" (the ONNX graphs in onnxruntime inside
    Triton's python backend). Every platform also gets the python preprocessing models and the ensembles
    ``ruclip_tiny_text`` / ``ruclip_tiny_image`` (``export.triton_ensemble``); ``python_path``: directories each
    python model puts first on ``sys.path`` (relative ones made absolute). Every graph or engine is refused as the
    embedder refuses it: not deployable (unless ``allow_not_deployable``), or changed since the manifest was written.
    precision: "fp32"/"fp16" (default fp16 for tensorrt, else fp32).
    instance_kind: "auto", "gpu", "cpu" (default auto for onnxruntime, gpu for tensorrt, cpu for python). An
    existing non-empty ``out`` is replaced only with ``force``, and only once the new repository is complete.
    """
    if platform not in PLATFORMS:
        raise TritonRepoError(f"unknown platform {platform!r}; choose one of: {', '.join(PLATFORMS)}")
    precision = precision or DEFAULT_PRECISION[platform]
    if precision not in ("fp32", "fp16"):
        raise TritonRepoError(f"unknown precision {precision!r}; choose fp32 or fp16")
    instance_kind = instance_kind or {"tensorrt": "gpu", "python": "cpu"}.get(platform, "auto")
    if instance_kind not in INSTANCE_KINDS:
        raise TritonRepoError(f"unknown instance kind {instance_kind!r}; choose one of: {', '.join(INSTANCE_KINDS)}")
    if platform == "tensorrt" and instance_kind == "cpu":
        raise TritonRepoError("TensorRT plans run on GPUs only: use --instance-kind gpu (or auto)")
    if platform == "python" and instance_kind == "gpu":
        raise TritonRepoError("the python encoders run onnxruntime on the CPU: use --instance-kind cpu (or auto), or "
                              "--platform onnxruntime/tensorrt for GPUs")
    python_path = [str(p) if Path(p).is_absolute() else os.path.abspath(p) for p in python_path]
    for name, value in (("max_batch", max_batch), ("instance_count", instance_count)):
        if not isinstance(value, int) or value < 1:
            raise TritonRepoError(f"{name} must be a positive integer, got {value!r}")
    if max_queue_delay_us < 0:
        raise TritonRepoError(f"max_queue_delay_us must be >= 0, got {max_queue_delay_us}")
    out = Path(out)
    check_target(out, force, REPOSITORY_OWNERSHIP)
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    options = dict(max_batch=max_batch, max_queue_delay_us=max_queue_delay_us, instance_count=instance_count,
                   instance_kind=instance_kind)
    if platform == "tensorrt":
        models = _plan_models(bundle, precision, trt_version, options, allow_not_deployable)
    else:
        models = _onnx_models(bundle, precision, options, allow_not_deployable,
                              python_path if platform == "python" else None)
    models += _python_models(bundle, max_batch, python_path, instance_count)
    synthetic = bundle.synthetic
    for model in models:
        model.synthetic = synthetic

    remove_stale_staging(out)
    staging = make_staging_directory(out)
    try:
        for model in models:
            version_dir = staging / model.name / VERSION
            version_dir.mkdir(parents=True)
            (staging / model.name / "config.pbtxt").write_text(model.config, encoding="utf-8")
            for name, source in model.files.items():
                if Path(source).is_dir():
                    shutil.copytree(source, version_dir / name)
                else:
                    shutil.copyfile(source, version_dir / name)
            if model.code is not None:
                (version_dir / "model.py").write_text(model.code, encoding="utf-8")
            if not model.files and model.code is None:  # an ensemble: Triton needs the version directory, empty
                (version_dir / ENSEMBLE_MARKER).write_text("an ensemble's version directory: empty on purpose\n",
                                                          encoding="utf-8")
        (staging / README).write_text(
            repository_readme(bundle, models, platform, precision, max_batch, synthetic), encoding="utf-8"
        )
        _write_listing(staging)
        for path in [staging, *staging.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)  # a serving container reads it as another user
        replace_directory(staging, out, REPOSITORY_OWNERSHIP, force)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return models
