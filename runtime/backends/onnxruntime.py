"""The ``onnxruntime`` backend: a bundle's ``visual[.fp16].onnx`` and ``textual[.fp16].onnx`` in ONNX Runtime.

``OnnxRuntimeEncoder`` runs one graph (a session, its input/output names, ``run`` and ``run_batched``; parity uses
it alone); ``OnnxRuntimeBackend`` pairs the two graphs of one precision behind the ``Backend`` interface.
Providers: CPU always; CUDA and TensorRT execution providers where this onnxruntime build has them
(``available_providers()``; they come with onnxruntime-gpu). On the CPU provider a batch runs as micro-batches
(``image_micro_batch``, ``text_micro_batch_tokens``) whose activations stay in the caches.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ruclip_tiny import spec
from runtime.manifest import BundleError, artifact_key, fused_key

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

# Micro-batches on the CPU provider ("auto"): one ONNX Runtime call per this many images, or per this many tokens
# of text (rows = tokens // width). A batch-8 image call's largest activation is 38.5 MB, past the 32 MB L3 of the
# CPU these were measured on; two images (9.6 MB) stay in it. Chosen with scripts/micro_batch_sweep.py (figures in
# docs/BENCHMARKS.md); run it on another CPU to choose there. A GPU provider runs whole batches: there a bigger
# call is a better-filled device.
CPU_IMAGE_MICRO_BATCH = 2
CPU_TEXT_MICRO_BATCH_TOKENS = 1024


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build has, e.g. ``["CPUExecutionProvider"]``."""
    return list(ort.get_available_providers())


def provider_name(provider: Provider) -> str:
    """``"CUDAExecutionProvider"`` for both ``"CUDAExecutionProvider"`` and ``("CUDAExecutionProvider", {...})``."""
    return provider if isinstance(provider, str) else provider[0]


def _numpy_dtype(onnxruntime_type: str) -> str:
    """``tensor(float)`` -> ``float32``: ONNX Runtime's type names as numpy's."""
    name = onnxruntime_type.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64"}.get(name, name)


def check_graph_io(session: ort.InferenceSession, encoder: spec.EncoderSpec, path: Path) -> None:
    """Refuse (BundleError) a graph whose inputs or outputs are not ``encoder``'s: names, dtypes, fixed axes
    (pixels 3×224×224, features 768) and dynamic ones (batch, sequence), as ONNX Runtime reads them from the graph —
    the check export applies to what it writes (``ruclip_tiny.spec.io_mismatches``), without the onnx package."""
    described = [
        [(value.name, _numpy_dtype(value.type), list(value.shape)) for value in values]
        for values in (session.get_inputs(), session.get_outputs())
    ]
    problems = spec.io_mismatches(encoder, *described)
    if problems:
        raise BundleError(
            f"{path} is not a {encoder.name} encoder graph: {'; '.join(problems)} — the file was replaced or comes "
            "from another model; re-export the bundle (ruclip-tiny export --force)"
        )


class OnnxRuntimeEncoder:
    """One ONNX graph with a single float output ``[B, ...]`` (the encoders give ``float32 [B, 768]``).

    ``providers``: tried in order by ONNX Runtime; each must be available in this onnxruntime build.
    ``intra_op_threads``: threads per operator (None: ONNX Runtime's default, one per physical core).
    ``inter_op_threads``: threads across independent operators (None: ONNX Runtime's default; only used by the
    parallel execution mode).
    ``execution_mode``: ``sequential`` (ONNX Runtime's default) or ``parallel`` (independent branches at once).
    ``graph_optimization_level``: ``disable``, ``basic``, ``extended`` or ``all``.
    ``encoder``: the spec the graph must implement; its inputs and outputs (names, dtypes, fixed and dynamic axes)
    are checked against it when the session opens, and a graph that differs is refused with BundleError (a
    replaced graph would otherwise load and fail at its first call).
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[Provider] = ("CPUExecutionProvider",),
        intra_op_threads: int | None = None,
        graph_optimization_level: str = "all",
        inter_op_threads: int | None = None,
        execution_mode: str = "sequential",
        encoder: spec.EncoderSpec | None = None,
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
        if encoder is not None:
            check_graph_io(self.session, encoder, self.path)
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
OPTIONS = (
    "providers",
    "intra_op_threads",
    "inter_op_threads",
    "graph_optimization_level",
    "execution_mode",
    "fused_attention",
    "image_micro_batch",
    "text_micro_batch_tokens",
)
FUSED_ATTENTION_CHOICES = ("auto", True, False)


def right_padded(attention_mask: np.ndarray) -> bool:
    """Whether every row of ``attention_mask`` (int [B, L]) is 1…1 0…0 with at least one 1 — the only masks
    ONNX Runtime's fused Attention computes correctly (it reads a row as its count of ones)."""
    mask = np.asarray(attention_mask)
    if mask.ndim != 2 or mask.shape[1] == 0:
        return False
    binary = np.isin(mask, (0, 1)).all()
    return bool(binary and (mask[:, 0] == 1).all() and (mask[:, 1:] <= mask[:, :-1]).all())


def resolve_micro_batch(value, option: str, cpu_default: int, device: str) -> int | None:
    """``value`` of the micro-batch option ``option`` as a number, or None for whole batches: ``"auto"`` is
    ``cpu_default`` on the CPU and None on a GPU; None or 0 turn micro-batches off; else a positive int."""
    if value == "auto":
        return cpu_default if device == "cpu" else None
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BackendError(f"{option} must be 'auto', a positive int, or 0/None for whole batches; got {value!r}")
    return value


def rows_for_tokens(tokens: int | None, width: int) -> int | None:
    """Rows of texts ``width`` tokens wide that fit in ``tokens`` (at least 1; None when ``tokens`` is None)."""
    return None if tokens is None else max(1, tokens // max(1, width))


def even_part_rows(rows: int, size: int | None) -> int:
    """Rows per call when ``rows`` run in calls of at most ``size`` (None: one call), the parts as even as they can
    be, so there is no tiny last call: 128 rows at most 28 a call run as 5 calls of 26 (the last 24)."""
    if size is None or rows <= size:
        return rows
    parts = -(-rows // size)
    return -(-rows // parts)


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
    """The manifest keys of the two graphs of ``precision``: ``visual.<precision>``, ``textual.<precision>``."""
    return [artifact_key(encoder, precision) for encoder in spec.ENCODERS]


class OnnxRuntimeBackend(Backend):
    """The visual and textual graphs of one precision, each in its own ONNX Runtime session.

    ``device`` follows the provider the sessions really use ("cuda" for CUDA/TensorRT, else "cpu"): ONNX Runtime
    falls back to the CPU when a GPU provider cannot start, and a fallback is logged, not hidden.
    """

    # ONNX Runtime's InferenceSession.run is thread-safe, and the two encoders are separate sessions.
    concurrent_calls = True

    name = "onnxruntime"
    max_batch = None

    def __init__(
        self,
        visual: OnnxRuntimeEncoder,
        textual: OnnxRuntimeEncoder,
        precision: str,
        textual_fused: OnnxRuntimeEncoder | None = None,
        image_micro_batch: int | None = None,
        text_micro_batch_tokens: int | None = None,
    ):
        self.visual = visual
        self.textual = textual
        # textual.fused.onnx: exact for right-padded masks only; encode_tokens sends every other mask to textual
        self.textual_fused = textual_fused
        self.precision = precision
        self.device = _device_of(visual.providers)
        self.fused_calls = 0
        self.unfused_calls = 0
        # images per ONNX Runtime call, and tokens per call of text (None: whole batches); see from_bundle
        self.image_micro_batch = image_micro_batch
        self.text_micro_batch_tokens = text_micro_batch_tokens

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
        fused_attention: str | bool = "auto",
        image_micro_batch: int | str | None = "auto",
        text_micro_batch_tokens: int | str | None = "auto",
    ) -> OnnxRuntimeBackend:
        """Open ``visual[.fp16].onnx`` and ``textual[.fp16].onnx`` of ``bundle`` (a ``runtime.bundle.Bundle``).

        fused_attention: also open the text encoder with ONNX Runtime's fused kernels (``textual.fused.onnx``,
        1.0-1.3x faster on a CPU) for right-padded masks — ``auto``: when the bundle has it for this precision,
        marked deployable, on the CPU provider (the kernels it was fused for); True: required; False: never
        (``plan_artifacts`` settles ``auto`` for a plan, knowing whether a graph without a passed verdict may run).
        image_micro_batch, text_micro_batch_tokens: run a batch as several ONNX Runtime calls of at most this many
        images, or this many tokens of text (rows = tokens // width, at least 1), so that the activations stay in
        the CPU's caches; rows come back in order and each row's features do not depend on its neighbours.
        ``auto``: CPU_IMAGE_MICRO_BATCH and CPU_TEXT_MICRO_BATCH_TOKENS on the CPU provider, whole batches on a
        GPU provider; 0 or None: whole batches.
        """
        providers = resolve_providers(providers)
        device = _device_of(providers)
        image_micro_batch = resolve_micro_batch(image_micro_batch, "image_micro_batch", CPU_IMAGE_MICRO_BATCH, device)
        text_micro_batch_tokens = resolve_micro_batch(
            text_micro_batch_tokens, "text_micro_batch_tokens", CPU_TEXT_MICRO_BATCH_TOKENS, device
        )
        settings = {
            "providers": providers,
            "intra_op_threads": intra_op_threads,
            "inter_op_threads": inter_op_threads,
            "graph_optimization_level": graph_optimization_level,
            "execution_mode": execution_mode,
        }
        visual_key, textual_key = artifact_keys(precision)
        visual = OnnxRuntimeEncoder(bundle.path(bundle.artifact(visual_key).path), **settings, encoder=spec.VISUAL)
        textual = OnnxRuntimeEncoder(bundle.path(bundle.artifact(textual_key).path), **settings, encoder=spec.TEXTUAL)
        fused = None
        fused_graph = fused_textual_key(bundle, precision, fused_attention, providers)
        if fused_graph is not None:
            fused = OnnxRuntimeEncoder(bundle.path(bundle.artifact(fused_graph).path), **settings, encoder=spec.TEXTUAL)
        backend = cls(visual, textual, precision, fused, image_micro_batch, text_micro_batch_tokens)
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
        fused = ", fused attention for right-padded text" if self.textual_fused is not None else ""
        micro = [f"{self.image_micro_batch} images" if self.image_micro_batch else "",
                 f"{self.text_micro_batch_tokens} tokens" if self.text_micro_batch_tokens else ""]
        micro = f", micro-batches of {' / '.join(m for m in micro if m)}" if any(micro) else ""
        return f"onnxruntime {ort.__version__} {self.precision} on {where}{fused}{micro}"

    def _encoder(self, encoder: OnnxRuntimeEncoder | None) -> OnnxRuntimeEncoder:
        if encoder is None:
            raise BackendError("this onnxruntime backend was closed; load the embedder again")
        return encoder

    def artifact_key(self, encoder: str) -> str:
        return artifact_key(encoder, self.precision)

    def served_artifacts(self) -> list[str]:
        fused = [fused_key(spec.TEXTUAL.name, self.precision)] if self.textual_fused is not None else []
        return [*super().served_artifacts(), *fused]

    @staticmethod
    def _run_in_parts(encoder: OnnxRuntimeEncoder, feeds: dict[str, np.ndarray], size: int | None) -> np.ndarray:
        rows = len(next(iter(feeds.values())))
        per_call = even_part_rows(rows, size)
        return encoder.run(feeds) if per_call >= rows else encoder.run_batched(feeds, per_call)

    def _encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        feeds = {spec.VISUAL.inputs[0].name: pixels}
        return self._run_in_parts(self._encoder(self.visual), feeds, self.image_micro_batch)

    def text_micro_batch(self, width: int) -> int | None:
        """Rows per ONNX Runtime call for texts ``width`` tokens wide (None: the whole batch)."""
        return rows_for_tokens(self.text_micro_batch_tokens, width)

    def _encode_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        names = [tensor.name for tensor in spec.TEXTUAL.inputs]
        feeds = dict(zip(names, (input_ids, attention_mask), strict=True))
        size = self.text_micro_batch(attention_mask.shape[1])
        # The guard: the fused Attention reads a mask row as a length, so only right-padded masks may reach it.
        if self.textual_fused is not None and right_padded(attention_mask):
            self.fused_calls += 1
            return self._run_in_parts(self.textual_fused, feeds, size)
        self.unfused_calls += 1
        return self._run_in_parts(self._encoder(self.textual), feeds, size)

    def close(self) -> None:
        # ONNX Runtime frees a session (and its device memory) when the last reference goes.
        self.visual = self.textual = self.textual_fused = None


def fused_textual_key(bundle, precision: str, fused_attention, providers, allow_not_deployable: bool = False
                      ) -> str | None:
    """The manifest key of the fused text graph to open, else None. ``fused_attention``: True — it is required
    (BackendError when the bundle has none); ``auto`` — when the bundle has it, the provider is the CPU's (the kernels
    it was fused for) and it may be deployed (its parity passed, or ``allow_not_deployable``); False — never.

    Its file is verified and gated like the other graphs' (``plan_artifacts`` lists it, and the embedder checks
    deployability, sha256 and I/O): a corrupt fused graph is refused, never skipped.
    """
    if fused_attention not in FUSED_ATTENTION_CHOICES:
        raise BackendError(f"fused_attention must be 'auto', True or False, not {fused_attention!r}")
    if fused_attention is False:
        return None
    key = fused_key(spec.TEXTUAL.name, precision)
    problem = None
    if key not in bundle.artifacts:
        problem = f"{bundle.root} has no {key} artifact (re-export the bundle with this version)"
    elif fused_attention is True:
        return key
    elif not (bundle.artifacts[key].usable or allow_not_deployable):
        problem = f"{key} is not marked deployable in {bundle.root}'s manifest (run ruclip-tiny parity)"
    elif provider_name(providers[0]) != "CPUExecutionProvider":
        problem = f"{key} was fused for the CPU provider, not {provider_name(providers[0])}"
    if problem is None:
        return key
    if fused_attention is True:
        raise BackendError(f"fused_attention=True but {problem}")
    logger.debug("fused attention not used: %s", problem)
    return None


def plan_artifacts(bundle, precision: str, options: dict, allow_not_deployable: bool) -> tuple[list[str], dict]:
    """The manifest keys a backend planned with ``options`` (providers resolved) will read — both graphs of
    ``precision``, and the fused text graph when it will be used — and the options with that settled."""
    fused = fused_textual_key(bundle, precision, options.get("fused_attention", "auto"), options["providers"],
                              allow_not_deployable)
    keys = artifact_keys(precision) + ([fused] if fused is not None else [])
    return keys, {**options, "fused_attention": fused is not None}


def from_bundle(bundle, precision: str = "fp32", **options) -> OnnxRuntimeBackend:
    """The loader ``BackendPlan.open`` calls."""
    return OnnxRuntimeBackend.from_bundle(bundle, precision, **options)
