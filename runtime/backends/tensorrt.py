"""The ``tensorrt`` backend: a bundle's TensorRT engines,
``engines/<trt-version>_sm<cc>/{visual,textual}.<precision>.plan``, run through Polygraphy's ``TrtRunner``
(``pip install '.[gpu]' in a checkout of ruclip-tiny``: tensorrt + polygraphy; no torch).

An engine only runs with the TensorRT version and on the GPU architecture it was built for, so the engines of a
bundle are keyed by both, in their directory name and in their manifest key (``engine_key``:
``engines/10.13.3_sm90/visual.fp16``). ``engine_status`` decides, before anything is loaded, whether this machine
can run a bundle's engines and, when not, says what it found, what it needs and the command that builds them;
``plan_backend`` refuses with that sentence (``check_bundle``) and ``auto`` falls back to ONNX Runtime quoting it
(``unavailable_reason``).

Running (``TensorRTEncoder``): one Polygraphy ``TrtRunner`` per engine — its own execution context, its own
(non-default) CUDA stream, device input buffers and output allocations reused from call to call, input shapes set
per call inside the optimisation profile; the base class cuts inputs with more rows than the profile's max batch into
calls and reassembles them in order. Polygraphy's INFO lines are quieted around each of its calls
(``quiet_polygraphy``). Threads: each encoder has ONE execution context guarded by a lock, so calls from several
threads are safe and run one at a time per encoder (the two encoders may run at the same time). A context per
thread would need a copy of the activation memory per thread; for concurrent requests open one backend per worker,
or serve through Triton.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import shutil
import subprocess
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ruclip_tiny import spec
from runtime.manifest import engine_key, parse_engine_key

from . import Backend, BackendError

OPTIONS = ()

_INSTALL = "pip install '.[gpu]' in a checkout of ruclip-tiny"


# --- this machine ------------------------------------------------------------------------------------------------


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or None when ``tensorrt`` is not importable."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt
    except Exception:  # a wheel without its CUDA libraries fails at import with various errors
        return None
    return str(tensorrt.__version__)


def polygraphy_available() -> bool:
    return importlib.util.find_spec("polygraphy") is not None


def _nvidia_smi(field: str, index: int) -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        result = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader", f"--id={index}"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = result.stdout.strip().splitlines() if result.returncode == 0 else []
    return lines[0].strip() if lines and lines[0].strip() else None


def gpu_compute_capability(index: int = 0) -> str | None:
    """Compute capability of GPU ``index`` as ``"90"`` (sm_90), from nvidia-smi; None when there is no GPU."""
    value = (_nvidia_smi("compute_cap", index) or "").replace(".", "")
    return value if value.isdigit() else None


def gpu_name(index: int = 0) -> str | None:
    """Name of GPU ``index`` (``NVIDIA H200``), from nvidia-smi; None when there is no GPU."""
    return _nvidia_smi("name", index)


@dataclass(frozen=True)
class Machine:
    """What decides which engines can run here: TensorRT version (None: not installed), whether Polygraphy is
    installed, and GPU 0's compute capability (``"90"``; None: no GPU) and name."""

    tensorrt: str | None
    polygraphy: bool
    compute_capability: str | None
    gpu: str | None = None

    def describe(self) -> str:
        trt = f"TensorRT {self.tensorrt}" if self.tensorrt else "no TensorRT"
        gpu = f"sm_{self.compute_capability} ({self.gpu or 'unknown GPU'})" if self.compute_capability else "no GPU"
        return f"{trt} on {gpu}"


@functools.lru_cache(maxsize=1)
def this_machine() -> Machine:
    """This machine (asked once per process: nvidia-smi takes ~0.1 s)."""
    return Machine(tensorrt_version(), polygraphy_available(), gpu_compute_capability(), gpu_name())


# --- Polygraphy's logging ------------------------------------------------------------------------------------------

_quiet_lock = threading.Lock()
_quiet_depth = 0
_loud_severity = None


@contextlib.contextmanager
def quiet_polygraphy() -> Iterator[None]:
    """Polygraphy's log at WARNING and above while inside (it logs every build step, activation and shape change at
    INFO, which a build's own progress or a server's log repeats), restored on leaving. Nested and concurrent uses
    share one quiet period: the severity returns when the last one leaves."""
    global _quiet_depth, _loud_severity
    from polygraphy.logger import G_LOGGER

    with _quiet_lock:
        if _quiet_depth == 0:
            _loud_severity = G_LOGGER.module_severity
            G_LOGGER.module_severity = G_LOGGER.WARNING
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                G_LOGGER.module_severity = _loud_severity


def build_command(bundle, precision: str) -> str:
    """The command that builds the engines this machine needs."""
    flag = "" if precision == "fp16" else f" --precision {precision}"
    return f"ruclip-tiny build-engines {bundle.root}{flag}"


# --- can this machine run the bundle's engines? -------------------------------------------------------------------


@dataclass(frozen=True)
class EngineStatus:
    """problem: why the engines cannot run here (None: they can); keys: the manifest keys this machine would run."""

    problem: str | None
    keys: list[str]


def _engines_found(bundle) -> str:
    """``engines for TensorRT 10.9.0 on sm_86 (fp16)``, from the manifest's engine entries (or ``no engines``)."""
    found: dict[tuple[str, str], set[str]] = {}
    for key in bundle.artifacts:
        parsed = parse_engine_key(key)
        if parsed is not None:
            found.setdefault((parsed[0], parsed[1]), set()).add(parsed[3])
    if not found:
        return "the bundle has no engines"
    return "the bundle has engines for " + "; ".join(
        f"TensorRT {version} on sm_{capability} ({', '.join(sorted(precisions))})"
        for (version, capability), precisions in sorted(found.items())
    )


def engine_keys(precision: str, machine: Machine) -> list[str]:
    """The manifest keys of the engines ``machine`` runs at ``precision`` (none without TensorRT or a GPU)."""
    if machine.tensorrt is None or machine.compute_capability is None:
        return []
    return [engine_key(e, precision, machine.tensorrt, machine.compute_capability) for e in spec.ENCODERS]


def engine_status(bundle, precision: str, machine: Machine | None = None, require_deployable: bool = False,
                  verify: bool = True) -> EngineStatus:
    """Whether ``machine`` (default: this one) can run ``bundle``'s ``precision`` engines.

    Checked in order: tensorrt installed, polygraphy installed, a GPU, both engines listed in the manifest for this
    TensorRT version and compute capability, their files present (and, with ``verify``, of the size and sha256 the
    manifest records: each file is hashed once per ``bundle`` object, so the embedder's check that follows reads it
    no more), and (``require_deployable``, what ``auto`` asks) both marked deployable by parity.
    """
    machine = machine or this_machine()
    build = build_command(bundle, precision)
    if machine.tensorrt is None:
        return EngineStatus(f"the tensorrt package is not installed ({_INSTALL})", [])
    if not machine.polygraphy:
        return EngineStatus(f"the polygraphy package, which runs the engines, is not installed ({_INSTALL})", [])
    if machine.compute_capability is None:
        return EngineStatus("no NVIDIA GPU found (nvidia-smi does not answer)", [])
    keys = engine_keys(precision, machine)
    missing = [key for key in keys if key not in bundle.artifacts]
    if missing:
        return EngineStatus(
            f"no {precision} engines for {machine.describe()} in {bundle.root} ({_engines_found(bundle)}); "
            f"engines run only with the TensorRT version and GPU architecture they were built for — build them "
            f"with: {build}",
            keys,
        )
    for key in keys:
        entry = bundle.artifacts[key]
        if not bundle.path(entry.path).is_file():
            return EngineStatus(f"{entry.path} is listed in the manifest but missing; rebuild with: {build}", keys)
        problem = bundle.file_problem(entry) if verify else None
        if problem is not None:
            return EngineStatus(f"{entry.path} {problem}: corrupt or replaced — rebuild with: {build}", keys)
    if require_deployable:
        refused = [key for key in keys if not bundle.artifacts[key].usable]
        if refused:
            return EngineStatus(
                f"{', '.join(refused)} not marked deployable (parity failed or never ran; see the manifest's parity "
                f"section) — rebuild with: {build}",
                keys,
            )
    return EngineStatus(None, keys)


def unavailable_reason(bundle, precision: str, verify: bool = True) -> str | None:
    """Why ``auto`` cannot use TensorRT for ``bundle`` at ``precision`` here (None: it can): it takes only engines
    marked deployable, and (``verify``) whose files match the manifest, so a corrupt engine falls back, never fails."""
    return engine_status(bundle, precision, require_deployable=True, verify=verify).problem


def check_bundle(bundle, precision: str) -> None:
    """Refuse, before anything loads, engines this machine cannot run: raise BackendError saying what was found,
    what is needed and the command that builds it. (Deployability and sha256 are the embedder's checks: the first
    can be overridden, the second skipped.)"""
    problem = engine_status(bundle, precision, verify=False).problem
    if problem is not None:
        raise BackendError(
            f"TensorRT backend not available: {problem}. Meanwhile use backend='onnxruntime' "
            f"(TensorRT needs {_INSTALL}, a GPU, and engines from: {build_command(bundle, precision)})"
        )


def plan_device(options: dict) -> tuple[str, dict]:
    if options:
        raise BackendError(f"the tensorrt backend has no option {', '.join(sorted(options))}")
    return "cuda", options


def check_precision(precision: str, device: str) -> None:
    """Engines exist per precision; which ones a bundle has is checked by ``check_bundle``."""


def artifact_keys(precision: str) -> list[str]:
    """The manifest keys of the engines this machine runs (empty without TensorRT or a GPU: nothing can open)."""
    return engine_keys(precision, this_machine())


def plan_artifacts(bundle, precision: str, options: dict, allow_not_deployable: bool) -> tuple[list[str], dict]:
    """The two engines of this machine and ``precision`` (refused with ``check_bundle``'s sentence when this machine
    cannot run them: no TensorRT, no GPU, no such engines in the manifest, a file missing)."""
    check_bundle(bundle, precision)
    return artifact_keys(precision), options


# --- running -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputBinding:
    """One engine input: numpy dtype the engine takes, and its optimisation-profile shapes (min, opt, max)."""

    name: str
    dtype: np.dtype
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


class TensorRTEncoder:
    """One engine behind an activated runner (Polygraphy's ``TrtRunner``: ``infer(feeds, check_inputs=False)`` ->
    ``{name: array}``), with its inputs' dtypes and profile shapes and its single output.

    ``run(feeds)``: feeds {input name: array [B, ...]}, B within the profile (the backend's base class cuts larger
    inputs into calls) -> float32 [B, 768], cast to the engine's input dtypes first. The runner reuses its host
    output buffers, so every result is copied out before the lock is released.
    """

    def __init__(self, runner, inputs: list[InputBinding], output: str, label: str):
        self.runner = runner
        self.inputs = {binding.name: binding for binding in inputs}
        self.output = output
        self.label = label
        self.max_batch = min(binding.max[0] for binding in inputs)
        self._lock = threading.Lock()

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        if set(feeds) != set(self.inputs):
            raise BackendError(f"{self.label} takes inputs {sorted(self.inputs)}, got {sorted(feeds)}")
        cast = {name: np.ascontiguousarray(feeds[name], dtype=binding.dtype) for name, binding in self.inputs.items()}
        with self._lock:
            if self.runner is None:
                raise BackendError("this tensorrt backend was closed; load the embedder again")
            try:
                with quiet_polygraphy():
                    output = self.runner.infer(cast, check_inputs=False)[self.output]
            except Exception as exc:  # Polygraphy and TensorRT raise their own types; keep their reason
                raise BackendError(f"TensorRT failed to run {self.label}: {exc}") from None
            return np.array(output, dtype=np.float32, copy=True)

    def close(self) -> None:
        with self._lock:
            runner, self.runner = self.runner, None
        if runner is not None:
            runner.deactivate()


def open_engine(path: Path, label: str, rebuild: str) -> TensorRTEncoder:
    """Deserialise the plan at ``path`` and activate a ``TrtRunner`` on it (context, stream, buffers)."""
    import tensorrt as trt
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.datatype import DataType

    try:
        with quiet_polygraphy():
            engine = EngineFromBytes(BytesFromPath(str(path)))()
    except Exception as exc:  # PolygraphyException when TensorRT returns no engine (version, corruption, GPU)
        raise BackendError(
            f"TensorRT {trt.__version__} cannot deserialise {path} ({exc}): built by another TensorRT version or "
            f"for another GPU, or corrupt — rebuild with: {rebuild}"
        ) from None
    inputs, outputs = [], []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
            outputs.append(name)
            continue
        low, opt, high = (tuple(int(d) for d in shape) for shape in engine.get_tensor_profile_shape(name, 0))
        dtype = DataType.to_dtype(DataType.from_dtype(engine.get_tensor_dtype(name), source_module="tensorrt"), "numpy")
        inputs.append(InputBinding(name, np.dtype(dtype), low, opt, high))
    if len(outputs) != 1:
        raise BackendError(f"{path} has outputs {outputs}; an encoder engine has exactly one — rebuild with: {rebuild}")
    runner = TrtRunner(engine, name=label)
    try:
        with quiet_polygraphy():
            runner.activate()
    except Exception as exc:
        raise BackendError(f"TensorRT cannot create an execution context for {path}: {exc}") from None
    return TensorRTEncoder(runner, inputs, outputs[0], label)


class TensorRTBackend(Backend):
    """The visual and textual engines of one precision, each in its own runner (context + stream + buffers)."""

    name = "tensorrt"
    device = "cuda"

    def __init__(self, visual: TensorRTEncoder, textual: TensorRTEncoder, precision: str, keys: dict[str, str],
                 machine: Machine | None = None):
        self.visual = visual
        self.textual = textual
        self.precision = precision
        self.keys = keys
        self.machine = machine
        self.max_batch = min(visual.max_batch, textual.max_batch)

    def artifact_key(self, encoder: str) -> str | None:
        """The manifest key of the engine this backend runs for ``encoder`` (``engines/…/visual.fp16``)."""
        return self.keys.get(encoder)

    def _encoder(self, encoder: TensorRTEncoder | None) -> TensorRTEncoder:
        if encoder is None:
            raise BackendError("this tensorrt backend was closed; load the embedder again")
        return encoder

    def _encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self._encoder(self.visual).run({spec.VISUAL.inputs[0].name: pixels})

    def _encode_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        names = [tensor.name for tensor in spec.TEXTUAL.inputs]
        return self._encoder(self.textual).run(dict(zip(names, (input_ids, attention_mask), strict=True)))

    def describe(self) -> str:
        where = self.machine.describe() if self.machine else "cuda"
        return f"tensorrt {self.precision} ({where})"

    def close(self) -> None:
        for encoder in (self.visual, self.textual):
            if encoder is not None:
                encoder.close()
        self.visual = self.textual = None


def from_bundle(bundle, precision: str = "fp16", **options) -> TensorRTBackend:
    """Open the engines this machine runs; refuses (BackendError) as ``check_bundle`` does, or when an engine does
    not deserialise."""
    if options:
        plan_device(options)
    check_bundle(bundle, precision)
    machine = this_machine()
    keys = dict(zip(spec.ENCODERS, engine_keys(precision, machine), strict=True))
    rebuild = build_command(bundle, precision)
    encoders = {}
    try:
        for encoder, key in keys.items():
            encoders[encoder] = open_engine(bundle.path(bundle.artifact(key).path), key, rebuild)
    except BaseException:
        for opened in encoders.values():
            opened.close()
        raise
    return TensorRTBackend(encoders["visual"], encoders["textual"], precision, keys, machine)
