"""Runs one encoder graph (``visual*.onnx`` or ``textual*.onnx``) with ONNX Runtime: numpy feeds in, features out.

Deliberately small: a session, its input/output names, a single-output ``run`` and a batched ``run_batched``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from . import BackendError

# A provider is a name ("CPUExecutionProvider") or a (name, options) pair, exactly as ONNX Runtime takes them.
Provider = str | tuple[str, dict]

_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def provider_name(provider: Provider) -> str:
    """``"CUDAExecutionProvider"`` for both ``"CUDAExecutionProvider"`` and ``("CUDAExecutionProvider", {...})``."""
    return provider if isinstance(provider, str) else provider[0]


class OnnxRuntimeEncoder:
    """One ONNX graph with a single float output ``[B, ...]`` (the encoders give ``float32 [B, 768]``).

    ``providers``: tried in order by ONNX Runtime; each must be available in this onnxruntime build.
    ``intra_op_threads``: threads per operator (None: ONNX Runtime's default, one per physical core).
    ``graph_optimization_level``: ``disable``, ``basic``, ``extended`` or ``all``.
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[Provider] = ("CPUExecutionProvider",),
        intra_op_threads: int | None = None,
        graph_optimization_level: str = "all",
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
        options = ort.SessionOptions()
        options.graph_optimization_level = _OPTIMIZATION_LEVELS[graph_optimization_level]
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
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
