"""The backends that compute embeddings from a bundle, behind one small interface; each module is named for the
engine it drives.

``onnxruntime``: the bundle's ONNX graphs in ONNX Runtime (CPU, CUDA or TensorRT execution provider).
``torch``: the PyTorch reference rebuilt from the bundle's ``reference.safetensors`` (imports torch, only when chosen).
``tensorrt``: TensorRT engines from ``engines/`` for this TensorRT version and GPU (tensorrt + polygraphy, no torch).
``auto``: the best one this machine can run, see ``plan_backend``.

Choosing is separate from loading (Polygraphy's loaders and runners): ``plan_backend`` decides which backend,
precision, device and artifacts — cheap, and before any file is read, so the caller can check the artifacts first —
and ``BackendPlan.open`` builds the backend. Every backend raises BackendError when it cannot load or run.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from ruclip_tiny.errors import RuclipTinyError

BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt")
PRECISIONS = ("auto", "fp32", "fp16")

logger = logging.getLogger("runtime.backends")


class BackendError(RuclipTinyError):
    """A graph a backend cannot load or run (bad file, unavailable provider, feeds that do not fit its inputs)."""


class Backend(ABC):
    """What the embedder needs of a backend: two encoders, numpy in and out, and ``close``.

    Attributes: ``name`` ("onnxruntime", "torch", "tensorrt"), ``precision`` ("fp32" or "fp16"), ``device``
    ("cpu" or "cuda"), ``max_batch`` (the most rows one call accepts; None = unlimited).
    Features are UNnormalised, as the model gives them. Calls may come from several threads one at a time.
    """

    name: str
    precision: str
    device: str
    max_batch: int | None = None

    @abstractmethod
    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """pixels: float32 [B, 3, 224, 224] (preprocessed) -> image_features float32 [B, 768]."""

    @abstractmethod
    def encode_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """input_ids, attention_mask: int64 [B, L], L <= 77 -> text_features float32 [B, 768]."""

    def artifact_key(self, encoder: str) -> str | None:
        """The manifest key of the artifact this backend runs for ``encoder`` ("visual" or "textual"), e.g.
        ``visual.fp16``; None when it runs none of its own (the torch backend rebuilds the reference). Parity marks
        that artifact deployable or not."""
        return None

    def close(self) -> None:
        """Release sessions, engines and device memory; the backend is unusable afterwards."""

    def describe(self) -> str:
        """One line for logs: ``onnxruntime fp32 on cpu``."""
        return f"{self.name} {self.precision} on {self.device}"

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


@dataclass
class BackendPlan:
    """A decided backend: what to open and why.

    name: a concrete backend ("onnxruntime", "torch", "tensorrt"); precision: "fp32" or "fp16"; device: "cpu" or
    "cuda"; artifacts: the manifest keys of the files it will read (to check and verify before opening);
    options: keyword arguments for the backend's ``from_bundle``; reason: why this backend (for ``auto``).
    """

    name: str
    precision: str
    device: str
    artifacts: list[str]
    options: dict = field(default_factory=dict)
    reason: str = ""

    def open(self, bundle) -> Backend:
        """Build the backend from ``bundle`` (a ``runtime.bundle.Bundle``)."""
        return _module(self.name).from_bundle(bundle, self.precision, **self.options)


def _module(name: str):
    """The module of a concrete backend, imported on demand (``torch`` must not load unless chosen)."""
    return importlib.import_module(f"{__name__}.{name}")


def _resolve_precision(precision: str, device: str) -> str:
    # FP16 pays off on a GPU; on a CPU ONNX Runtime emulates much of it and is slower than FP32.
    if precision == "auto":
        return "fp16" if device != "cpu" else "fp32"
    return precision


def plan_backend(bundle, backend: str = "auto", precision: str = "auto", **options) -> BackendPlan:
    """Decide backend, precision, device and artifacts for ``bundle`` without loading anything heavy.

    backend: "auto" picks, in order: ``tensorrt`` when it is importable and has engines for this GPU, then
    ``onnxruntime`` with CUDA when this onnxruntime build has CUDA, then ``onnxruntime`` on the CPU; the plan's
    ``reason`` says which and why (and is logged at INFO on ``runtime.backends``).
    precision: "auto" means fp16 on a GPU, fp32 on a CPU.
    options: passed to the chosen backend (e.g. ``providers``, ``intra_op_threads`` for onnxruntime; ``device``
    for torch).
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    reason = f"{backend} requested"
    if backend == "auto":
        backend, options, reason = _choose(bundle, precision, options)
    module = _module(backend)
    device, options = module.plan_device(options)
    precision = _resolve_precision(precision, device)
    module.check_precision(precision, device)
    check_bundle = getattr(module, "check_bundle", None)  # artifacts that depend on this machine (TensorRT engines)
    if check_bundle is not None:
        check_bundle(bundle, precision)
    # which files are read can depend on the bundle and the options (the fused text graph): ask the backend
    plan_artifacts = getattr(module, "plan_artifacts", None)
    artifacts = plan_artifacts(bundle, precision, options) if plan_artifacts else module.artifact_keys(precision)
    plan = BackendPlan(backend, precision, device, artifacts, options, reason)
    if plan.reason.startswith("auto"):
        logger.info("backend: %s %s on %s (%s)", plan.name, plan.precision, plan.device, plan.reason)
    return plan


def _choose(bundle, precision: str, options: dict) -> tuple[str, dict, str]:
    """``auto``: (backend, options, reason)."""
    from . import onnxruntime as ort_backend
    from . import tensorrt as trt_backend

    trt_precision = "fp16" if precision == "auto" else precision
    trt_problem = trt_backend.unavailable_reason(bundle, trt_precision)
    if trt_problem is None:
        return "tensorrt", options, f"auto: TensorRT engines for this GPU are in {bundle.root}"
    if "CUDAExecutionProvider" in ort_backend.available_providers():
        options = {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], **options}
        return "onnxruntime", options, f"auto: onnxruntime with CUDA (tensorrt not used: {trt_problem})"
    options = {"providers": ["CPUExecutionProvider"], **options}
    return (
        "onnxruntime",
        options,
        f"auto: onnxruntime on the CPU (no CUDAExecutionProvider in this onnxruntime build; "
        f"tensorrt not used: {trt_problem})",
    )


def open_backend(bundle, backend: str = "auto", precision: str = "auto", **options) -> Backend:
    """``plan_backend(...).open(bundle)``: the backend alone, without the artifact checks the Embedder does."""
    return plan_backend(bundle, backend, precision, **options).open(bundle)
