"""The backends that compute embeddings from a bundle: a registry, one written protocol, and the base class.

``onnxruntime``: the bundle's ONNX graphs in ONNX Runtime (CPU, CUDA or TensorRT execution provider).
``torch``: the PyTorch reference rebuilt from the bundle's ``reference.safetensors`` (imports torch, only when chosen).
``tensorrt``: TensorRT engines from ``engines/`` for this TensorRT version and GPU (tensorrt + polygraphy, no torch).
``auto``: the best one this machine can run, see ``plan_backend``.

Choosing is separate from loading (Polygraphy's loaders and runners): ``plan_backend`` decides which backend,
precision, device and artifacts — cheap, and before any file is read, so the caller can check the artifacts first —
and ``BackendPlan.open`` builds the backend. Every backend raises BackendError when it cannot load or run.

The protocol every backend module of ``REGISTRY`` follows (``BackendModule``): ``OPTIONS`` (the keyword arguments
of ``from_bundle``), ``plan_device(options) -> (device, options)``, ``check_precision(precision, device)``,
``plan_artifacts(bundle, precision, options, allow_not_deployable) -> (keys, options)`` (EVERY manifest artifact
the backend will read, so that the embedder verifies and gates each of them, and the options with what that
settled — the fused text graph used or not; BackendError when this machine cannot run the bundle) and
``from_bundle(bundle, precision, **options) -> Backend``.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from types import ModuleType
from typing import Protocol

import numpy as np

from ruclip_tiny import spec
from ruclip_tiny.errors import RuclipTinyError

# name -> module, imported only when the backend is used (``torch`` must not load unless chosen).
REGISTRY = {
    "onnxruntime": "runtime.backends.onnxruntime",
    "torch": "runtime.backends.torch",
    "tensorrt": "runtime.backends.tensorrt",
}
BACKENDS = ("auto", *REGISTRY)
PRECISIONS = ("auto", "fp32", "fp16")

logger = logging.getLogger("runtime.backends")


class BackendError(RuclipTinyError):
    """A graph a backend cannot load or run (bad file, unavailable provider, feeds that do not fit its inputs)."""


class BackendModule(Protocol):
    """What ``plan_backend`` and ``BackendPlan.open`` use of a backend module (see the module docstring)."""

    OPTIONS: tuple[str, ...]

    def plan_device(self, options: dict) -> tuple[str, dict]: ...

    def check_precision(self, precision: str, device: str) -> None: ...

    def plan_artifacts(
        self, bundle, precision: str, options: dict, allow_not_deployable: bool
    ) -> tuple[list[str], dict]: ...

    def from_bundle(self, bundle, precision: str, **options) -> Backend: ...


def backend_module(name: str) -> ModuleType:
    """The module of a concrete backend of ``REGISTRY``, imported on demand."""
    if name not in REGISTRY:
        raise BackendError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return importlib.import_module(REGISTRY[name])


class Backend(ABC):
    """What the embedder needs of a backend: two encoders, numpy in and out, and ``close``.

    Attributes: ``name`` ("onnxruntime", "torch", "tensorrt"), ``precision`` ("fp32" or "fp16"), ``device``
    ("cpu" or "cuda"), ``max_batch`` (the most rows one call of the engine takes; None = unlimited).
    The public ``encode_pixels``/``encode_tokens`` check the shapes against ``ruclip_tiny.spec``, cut the rows into
    calls of at most ``max_batch`` and check what comes back; a backend implements ``_encode_pixels`` and
    ``_encode_tokens`` for one such call (Polygraphy's ``infer``/``infer_impl``).
    Features are UNnormalised, as the model gives them. Calls may come from several threads one at a time, or, where
    ``concurrent_calls`` is True, at the same time (an image call and a text call side by side).
    """

    name: str
    precision: str
    device: str
    max_batch: int | None = None
    # True only where the engine is known to take simultaneous calls from several threads; the server then runs texts
    # in a thread of their own, so a text never waits for an image call. False for the torch backend (CUDA graphs
    # replay shared buffers) and TensorRT (one execution context per engine).
    concurrent_calls: bool = False

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """pixels: float32 [B, 3, 224, 224] (preprocessed) -> image_features float32 [B, 768]."""
        pixels = np.asarray(pixels, dtype=np.float32)
        image = tuple(spec.VISUAL.inputs[0].shape[1:])
        if pixels.ndim != 4 or pixels.shape[1:] != image:
            raise BackendError(
                f"{self.describe()}: pixels must be float32 [batch, {', '.join(map(str, image))}], got shape "
                f"{list(pixels.shape)}"
            )
        return self._in_calls(self._encode_pixels, pixels)

    def encode_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """input_ids, attention_mask: int64 [B, L], 1 <= L <= 77 -> text_features float32 [B, 768]."""
        ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.asarray(attention_mask, dtype=np.int64)
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise BackendError(
                f"{self.describe()}: input_ids and attention_mask must be int64 [batch, seq] of one shape, got "
                f"{list(ids.shape)} and {list(mask.shape)}"
            )
        if not 1 <= ids.shape[1] <= spec.MAX_TEXT_LENGTH:
            raise BackendError(
                f"{self.describe()}: input_ids has {ids.shape[1]} tokens per row; the text encoder takes "
                f"1..{spec.MAX_TEXT_LENGTH}"
            )
        return self._in_calls(self._encode_tokens, ids, mask)

    def _in_calls(self, encode, *arrays: np.ndarray) -> np.ndarray:
        rows = len(arrays[0])
        size = self.max_batch or max(rows, 1)
        parts = []
        for start in range(0, rows, size):
            chunk = [array[start : start + size] for array in arrays]
            features = encode(*chunk)
            if features.shape != (len(chunk[0]), spec.EMBED_DIM):
                raise BackendError(
                    f"{self.describe()} returned features of shape {list(features.shape)} for {len(chunk[0])} "
                    f"inputs; expected [{len(chunk[0])}, {spec.EMBED_DIM}]"
                )
            parts.append(features)
        if not parts:
            return np.zeros((0, spec.EMBED_DIM), np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    @abstractmethod
    def _encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """One call: pixels float32 [b, 3, 224, 224], 1 <= b <= max_batch -> float32 [b, 768]."""

    @abstractmethod
    def _encode_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """One call: input_ids, attention_mask int64 [b, L], 1 <= b <= max_batch -> float32 [b, 768]."""

    def artifact_key(self, encoder: str) -> str | None:
        """The manifest key of the artifact this backend runs for ``encoder`` ("visual" or "textual"), e.g.
        ``visual.fp16``; None when it runs none of its own (the torch backend rebuilds the reference). Parity marks
        that artifact deployable or not."""
        return None

    def served_artifacts(self) -> list[str]:
        """The manifest keys of every graph or engine this backend runs (the fused text graph included): what a
        server reports the parity of."""
        keys = [self.artifact_key(encoder) for encoder in spec.ENCODERS]
        return [key for key in keys if key is not None]

    def close(self) -> None:
        """Release sessions, engines and device memory; the backend is unusable afterwards."""
        return None

    def describe(self) -> str:
        """One line for logs: ``onnxruntime fp32 on cpu``."""
        return f"{self.name} {self.precision} on {self.device}"

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


@dataclass
class BackendPlan:
    """A decided backend: what to open and why.

    name: a concrete backend ("onnxruntime", "torch", "tensorrt"); precision: "fp32" or "fp16"; device: "cpu" or
    "cuda"; artifacts: the manifest keys of EVERY file it will read (to gate and verify before opening);
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
        return backend_module(self.name).from_bundle(bundle, self.precision, **self.options)


def _resolve_precision(precision: str, device: str) -> str:
    # FP16 pays off on a GPU; on a CPU ONNX Runtime emulates much of it and is slower than FP32.
    if precision == "auto":
        return "fp16" if device != "cpu" else "fp32"
    return precision


def plan_backend(bundle, backend: str = "auto", precision: str = "auto", *, verify: bool = True,
                 allow_not_deployable: bool = False, **options) -> BackendPlan:
    """Decide backend, precision, device and artifacts for ``bundle`` without loading anything heavy.

    backend: "auto" picks, in order: ``tensorrt`` when it is importable and has deployable engines for this GPU
    (their sha256 checked when ``verify``), then ``onnxruntime`` with CUDA when this onnxruntime build has CUDA, then
    ``onnxruntime`` on the CPU; the plan's ``reason`` says which and why (and is logged at INFO on
    ``runtime.backends``).
    precision: "auto" means fp16 on a GPU, fp32 on a CPU.
    allow_not_deployable: an optional artifact (the fused text graph) is planned even without a passed verdict.
    options: passed to the chosen backend (e.g. ``providers``, ``intra_op_threads`` for onnxruntime; ``device``
    for torch).
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    reason = f"{backend} requested"
    if backend == "auto":
        backend, options, reason = _choose(bundle, precision, options, verify)
    module: BackendModule = backend_module(backend)
    device, options = module.plan_device(options)
    precision = _resolve_precision(precision, device)
    module.check_precision(precision, device)
    artifacts, options = module.plan_artifacts(bundle, precision, options, allow_not_deployable)
    plan = BackendPlan(backend, precision, device, artifacts, options, reason)
    if plan.reason.startswith("auto"):
        logger.info("backend: %s %s on %s (%s)", plan.name, plan.precision, plan.device, plan.reason)
    return plan


def _choose(bundle, precision: str, options: dict, verify: bool) -> tuple[str, dict, str]:
    """``auto``: (backend, options, reason)."""
    ort_backend = backend_module("onnxruntime")
    trt_backend = backend_module("tensorrt")

    trt_precision = "fp16" if precision == "auto" else precision
    trt_problem = trt_backend.unavailable_reason(bundle, trt_precision, verify)
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
