"""The ``onnxruntime`` backend: a bundle's ``visual[.fp16].onnx`` and ``textual[.fp16].onnx`` in ONNX Runtime.

``OnnxRuntimeEncoder`` runs one graph (a session, its input/output names, ``run`` and ``run_batched``; parity uses
it alone); ``OnnxRuntimeBackend`` pairs the two graphs of one precision behind the ``Backend`` interface.
Providers: CPU always; CUDA and TensorRT execution providers where this onnxruntime build has them
(``available_providers()``; they come with onnxruntime-gpu).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ruclip_tiny import spec
from runtime.bundle import artifact_key

from . import Backend, BackendError

# A provider is a name ("CPUExecutionProvider") or a (name, options) pair, exactly as ONNX Runtime takes them.
Provider = str | tuple[str, dict]

logger = logging.getLogger("runtime.backends")

_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


_EXECUTION_MODES = {
    "sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
    "parallel": ort.ExecutionMode.ORT_PARALLEL,
}

# Short names accepted wherever providers are given, e.g. ``providers=["cuda", "cpu"]``.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
# Providers that run on the GPU: a session whose first provider is one of these is on "cuda".
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build has, e.g. ``["CPUExecutionProvider"]``."""
    return list(ort.get_available_providers())


def provider_name(provider: Provider) -> str:
    """``"CUDAExecutionProvider"`` for both ``"CUDAExecutionProvider"`` and ``("CUDAExecutionProvider", {...})``."""
    return provider if isinstance(provider, str) else provider[0]


class OnnxRuntimeEncoder:
    """One ONNX graph with a single float output ``[B, ...]`` (the encoders give ``float32 [B, 768]``).

    ``providers``: tried in order by ONNX Runtime; each must be available in this onnxruntime build.
    ``intra_op_threads``: threads per operator (None: ONNX Runtime's default, one per physical core).
    ``inter_op_threads``: threads across independent operators (None: ONNX Runtime's default; only used by the
    parallel execution mode).
    ``execution_mode``: ``sequential`` (ONNX Runtime's default) or ``parallel`` (independent branches at once).
    ``graph_optimization_level``: ``disable``, ``basic``, ``extended`` or ``all``.
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[Provider] = ("CPUExecutionProvider",),
        intra_op_threads: int | None = None,
        graph_optimization_level: str = "all",
        inter_op_threads: int | None = None,
        execution_mode: str = "sequential",
    ):
        self.path = Path(path)
        if graph_optimization_level not in _OPTIMIZATION_LEVELS:
            raise BackendError(
                f"graph_optimization_level {graph_optimization_level!r} is not one of {', '.join(_OPTIMIZATION_LEVELS)}"
            )
        available = ort.get_available_providers()
        missing = [provider_name(p) for p in providers if provider_name(p) not in available]
        if missing:
            raise BackendError(
                f"ONNX Runtime provider {', '.join(missing)} is not available in this onnxruntime "
                f"{ort.__version__} build (available: {', '.join(available)}); for CUDA install onnxruntime-gpu "
                "in place of onnxruntime"
            )
        if execution_mode not in _EXECUTION_MODES:
            raise BackendError(f"execution_mode {execution_mode!r} is not one of {', '.join(_EXECUTION_MODES)}")
        options = ort.SessionOptions()
        options.execution_mode = _EXECUTION_MODES[execution_mode]
        options.graph_optimization_level = _OPTIMIZATION_LEVELS[graph_optimization_level]
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        if inter_op_threads is not None:
            options.inter_op_num_threads = inter_op_threads
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=list(providers))
        except Exception as exc:  # ONNX Runtime raises its own pybind exception types, not a common base
            raise BackendError(f"ONNX Runtime cannot load {self.path}: {exc}") from None
        self.input_names = [value.name for value in self.session.get_inputs()]
        self.output_names = [value.name for value in self.session.get_outputs()]
        if len(self.output_names) != 1:
            raise BackendError(
                f"{self.path} has outputs {self.output_names}; an encoder graph has exactly one (its features)"
            )

    @property
    def providers(self) -> list[str]:
        """The providers the session actually uses, in priority order (ONNX Runtime may drop unusable ones)."""
        return self.session.get_providers()

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """The graph's output for one batch, as float32. ``feeds`` must name exactly the graph's inputs."""
        if set(feeds) != set(self.input_names):
            raise BackendError(f"{self.path} takes inputs {self.input_names}, got {sorted(feeds)}")
        try:
            (output,) = self.session.run(self.output_names, {name: np.ascontiguousarray(feeds[name]) for name in feeds})
        except Exception as exc:  # wrong dtype or shape, or a kernel failure: name the graph, keep ORT's reason
            raise BackendError(f"ONNX Runtime failed to run {self.path}: {exc}") from None
        return np.asarray(output, dtype=np.float32)

    def run_batched(self, feeds: Mapping[str, np.ndarray], batch_size: int) -> np.ndarray:
        """``run`` over slices of ``batch_size`` rows along axis 0 of every feed, concatenated in order."""
        if batch_size < 1:
            raise BackendError(f"batch_size must be at least 1, got {batch_size}")
        rows = {name: len(array) for name, array in feeds.items()}
        if len(set(rows.values())) != 1 or 0 in rows.values():
            raise BackendError(f"feeds for {self.path} must share a non-zero number of rows, got {rows or 'no feeds'}")
        total = next(iter(rows.values()))
        chunks = [
            self.run({name: array[start : start + batch_size] for name, array in feeds.items()})
            for start in range(0, total, batch_size)
        ]
        return np.concatenate(chunks, axis=0)


# --- the backend: both encoders of one precision ------------------------------------------------------------------


def resolve_providers(providers: Sequence[Provider] | str | None = None) -> list[Provider]:
    """Providers as ONNX Runtime takes them, from names, aliases (``cpu``, ``cuda``, ``tensorrt``) or a comma list.

    None: CUDA then CPU where this build has CUDA, else CPU. A plain CUDA provider gets ``use_tf32=0``: ONNX Runtime
    turns TF32 on by default, and TF32 matmuls (10-bit mantissa) would move FP32 results for a reason that is not in
    the graph; pass ``("CUDAExecutionProvider", {"use_tf32": "1"})`` to have it anyway.
    """
    if providers is None:
        available = available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    elif isinstance(providers, str):
        providers = [name.strip() for name in providers.split(",") if name.strip()]
    resolved: list[Provider] = []
    for provider in providers:
        if isinstance(provider, str):
            provider = PROVIDER_ALIASES.get(provider.lower(), provider)
            if provider == "CUDAExecutionProvider":
                provider = ("CUDAExecutionProvider", {"use_tf32": "0"})
        else:
            provider = (PROVIDER_ALIASES.get(provider[0].lower(), provider[0]), dict(provider[1]))
        resolved.append(provider)
    if not resolved:
        raise BackendError("no ONNX Runtime provider given; pass e.g. providers=['CPUExecutionProvider']")
    return resolved


def _device_of(providers: Sequence[Provider]) -> str:
    return "cuda" if provider_name(providers[0]) in GPU_PROVIDERS else "cpu"


# The keyword arguments ``from_bundle`` takes besides the precision (checked before anything loads).
OPTIONS = ("providers", "intra_op_threads", "inter_op_threads", "graph_optimization_level", "execution_mode")


def plan_device(options: dict) -> tuple[str, dict]:
    """(device, options with ``providers`` resolved) for a plan; checks the option names."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise BackendError(
            f"the onnxruntime backend has no option {', '.join(unknown)}; it takes: {', '.join(OPTIONS)}"
        )
    options = {**options, "providers": resolve_providers(options.get("providers"))}
    return _device_of(options["providers"]), options


def check_precision(precision: str, device: str) -> None:
    """Both precisions run everywhere (FP16 graphs on a CPU are slow but exact to their contract)."""


def artifact_keys(precision: str) -> list[str]:
    """The manifest keys this backend reads: ``visual.<precision>``, ``textual.<precision>``."""
    return [artifact_key(encoder, precision) for encoder in spec.ENCODERS]


class OnnxRuntimeBackend(Backend):
    """The visual and textual graphs of one precision, each in its own ONNX Runtime session.

    ``device`` follows the provider the sessions really use ("cuda" for CUDA/TensorRT, else "cpu"): ONNX Runtime
    falls back to the CPU when a GPU provider cannot start, and a fallback is logged, not hidden.
    """

    name = "onnxruntime"
    max_batch = None

    def __init__(self, visual: OnnxRuntimeEncoder, textual: OnnxRuntimeEncoder, precision: str):
        self.visual = visual
        self.textual = textual
        self.precision = precision
        self.device = _device_of(visual.providers)

    @classmethod
    def from_bundle(
        cls,
        bundle,
        precision: str = "fp32",
        providers: Sequence[Provider] | str | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        graph_optimization_level: str = "all",
        execution_mode: str = "sequential",
    ) -> "OnnxRuntimeBackend":
        """Open ``visual[.fp16].onnx`` and ``textual[.fp16].onnx`` of ``bundle`` (a ``runtime.bundle.Bundle``)."""
        providers = resolve_providers(providers)
        settings = {
            "providers": providers,
            "intra_op_threads": intra_op_threads,
            "inter_op_threads": inter_op_threads,
            "graph_optimization_level": graph_optimization_level,
            "execution_mode": execution_mode,
        }
        visual_key, textual_key = artifact_keys(precision)
        visual = OnnxRuntimeEncoder(bundle.path(bundle.artifact(visual_key)["path"]), **settings)
        textual = OnnxRuntimeEncoder(bundle.path(bundle.artifact(textual_key)["path"]), **settings)
        backend = cls(visual, textual, precision)
        requested = provider_name(providers[0])
        if backend.providers[0] != requested:
            logger.warning(
                "onnxruntime could not use %s and runs on %s instead", requested, backend.providers[0]
            )
        return backend

    @property
    def providers(self) -> list[str]:
        """The providers the visual session really uses, in priority order."""
        return self._encoder(self.visual).providers

    def describe(self) -> str:
        where = self.providers[0] if self.visual is not None else "(closed)"
        return f"onnxruntime {ort.__version__} {self.precision} on {where}"

    def _encoder(self, encoder: OnnxRuntimeEncoder | None) -> OnnxRuntimeEncoder:
        if encoder is None:
            raise BackendError("this onnxruntime backend was closed; load the embedder again")
        return encoder

    def artifact_key(self, encoder: str) -> str:
        return artifact_key(encoder, self.precision)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self._encoder(self.visual).run({spec.VISUAL.inputs[0].name: np.asarray(pixels, dtype=np.float32)})

    def encode_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        names = [tensor.name for tensor in spec.TEXTUAL.inputs]
        feeds = dict(zip(names, (np.asarray(input_ids, np.int64), np.asarray(attention_mask, np.int64))))
        return self._encoder(self.textual).run(feeds)

    def close(self) -> None:
        # ONNX Runtime frees a session (and its device memory) when the last reference goes.
        self.visual = self.textual = None


def from_bundle(bundle, precision: str = "fp32", **options) -> OnnxRuntimeBackend:
    """The loader ``BackendPlan.open`` calls."""
    return OnnxRuntimeBackend.from_bundle(bundle, precision, **options)
