"""``ruclip-tiny build-engines BUNDLE``: TensorRT engines from a bundle's ONNX graphs, built with Polygraphy's loaders,
recorded in the manifest and gated by parity.

Precision comes from the graph: the network is strongly typed (TensorRT 11 knows nothing else; TensorRT 10 takes the
same flag), so ``--precision fp16`` builds ``visual.fp16.onnx``/``textual.fp16.onnx`` — FP16 compute with the FP32
islands the export chose, FP32 inputs and outputs — and ``--precision fp32`` builds the FP32 graphs. No precision
flag is set (TensorRT 11 has none); TF32 stays off (Polygraphy's default), so an FP32 engine computes in FP32.

Optimisation profiles come from ``ruclip_tiny.spec`` (``profile_shapes``): every dynamic dimension spans its range
from the spec — batch 1…``max_batch`` (opt ``opt_batch``) for both encoders, sequence 1…77 for text (opt
``opt_sequence``, see ``OPT_SEQUENCE``); fixed dimensions are fixed. The timing cache lives beside the engines
(``engines/<trt>_sm<cc>/timing.cache``) and makes a rebuild take a fraction of the first build. Plans and cache are
written to temporary names and renamed, so a failed or interrupted build leaves nothing that looks valid.

Right after building, parity runs the engines through the ``tensorrt`` backend on the bundle's probe and judges them
with the precision's thresholds; an engine that fails stays on disk for inspection, marked ``deployable: false``
(the command, ``ruclip_tiny/cli/build_engines.py``, then exits 1).
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ruclip_tiny import spec
from ruclip_tiny.errors import RuclipTinyError
from ruclip_tiny.fileio import atomic_path
from ruclip_tiny.progress import StageTimer
from runtime.backends import tensorrt as trt_backend
from runtime.bundle import Bundle
from runtime.manifest import (
    Artifact,
    EngineArtifact,
    EngineSource,
    FileEntry,
    artifact_key,
    engine_key,
    engine_path,
    spec_dims,
    spec_io,
    timing_cache_path,
)

PRECISIONS = ("fp16", "fp32")
DEFAULT_MAX_BATCH = 256
DEFAULT_OPT_BATCH = 32
# TensorRT picks its kernels for the opt shape. The runtime trims padding to the longest text of a chunk, so
# a chunk of realistic captions reaches the encoder as wide as its longest caption (the probe's captions: 2–36
# tokens, median 12; only its two truncation cases fill 77), so 20–36 columns is the common case. 32 tunes for
# that without tuning every kernel for the rare full-length batch, which still runs (the profile's max is 77).
OPT_SEQUENCE = 32
GIB = 1 << 30


class EngineBuildError(RuclipTinyError):
    """Engines that cannot be built here or as asked (no TensorRT, no GPU, bad profile, graphs not as listed)."""


# --- profiles: from the one I/O description ------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeRange:
    """The shapes an optimisation profile accepts for one input: min, opt and max, each a full shape."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def profile_shapes(
    encoder: str,
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int = DEFAULT_OPT_BATCH,
    opt_sequence: int = OPT_SEQUENCE,
) -> dict[str, ShapeRange]:
    """{input name: ShapeRange} for ``encoder`` ("visual" or "textual"), read from ``ruclip_tiny.spec``.

    A dynamic dimension runs from its spec minimum to its spec maximum; one the spec leaves unbounded (batch) to
    ``max_batch``. Its opt value is ``opt_batch`` for batch and ``opt_sequence`` for the sequence.
    Raises EngineBuildError for a profile TensorRT would reject (opt outside min..max, max below min).
    """
    if encoder not in spec.ENCODERS:
        raise EngineBuildError(f"unknown encoder {encoder!r}; the model has {', '.join(spec.ENCODERS)}")
    optimum = {spec.BATCH.name: opt_batch, spec.SEQUENCE.name: opt_sequence}
    ranges = {}
    for tensor in spec.ENCODERS[encoder].inputs:
        triples = []
        for dim in tensor.shape:
            if not isinstance(dim, spec.Dim):
                triples.append((dim, dim, dim))
                continue
            top = dim.max if dim.max is not None else max_batch
            best = optimum.get(dim.name, top)
            if not dim.min <= best <= top:
                option = "--opt-batch" if dim.name == spec.BATCH.name else "--opt-seq"
                raise EngineBuildError(
                    f"{option} {best} is outside {dim.name} {dim.min}..{top}; choose a value in that range"
                    + (" (or raise --max-batch)" if dim.name == spec.BATCH.name else "")
                )
            triples.append((dim.min, best, top))
        low, opt, high = zip(*triples, strict=True)
        ranges[tensor.name] = ShapeRange(low, opt, high)
    return ranges


# --- what this machine is ------------------------------------------------------------------------------------------


def check_build_prerequisites(machine: trt_backend.Machine | None = None) -> trt_backend.Machine:
    """This machine, if it can build engines; else EngineBuildError naming what is missing (checked in ~0.1 s,
    before anything heavy loads)."""
    machine = machine or trt_backend.this_machine()
    if machine.tensorrt is None:
        raise EngineBuildError(
            "cannot build TensorRT engines: the tensorrt Python package is not installed (or does not import). "
            "Install it on the machine whose GPU will serve: pip install '.[gpu]' in a checkout of ruclip-tiny. "
            "Without TensorRT, serve the bundle's ONNX graphs (backend='onnxruntime') or use the torch backend on CUDA"
        )
    if not machine.polygraphy:
        raise EngineBuildError(
            "cannot build TensorRT engines: polygraphy, which drives the build, is not installed: "
            "pip install '.[gpu]' in a checkout of ruclip-tiny"
        )
    if machine.compute_capability is None:
        raise EngineBuildError(
            f"cannot build TensorRT engines: no NVIDIA GPU found (nvidia-smi does not answer). TensorRT "
            f"{machine.tensorrt} builds an engine for the GPU it runs on: run build-engines on a machine with the "
            "GPU model that will serve"
        )
    return machine


# --- the manifest --------------------------------------------------------------------------------------------------


def engine_entry(
    root: Path,
    encoder: str,
    precision: str,
    machine: trt_backend.Machine,
    profiles: dict[str, ShapeRange],
    source: Artifact,
    settings: dict,
    build_seconds: float,
) -> EngineArtifact:
    """The manifest entry of a built engine (its file must exist): path, size, sha256, what it was built from and
    with, for which GPU, its profiles, and its I/O from the one description the graphs' entries use.
    ``deployable`` starts False: only parity sets it."""
    relative = engine_path(encoder, precision, machine.tensorrt, machine.compute_capability)
    inputs, outputs = spec_io(encoder)
    return EngineArtifact.describe(
        root,
        relative,
        encoder=encoder,
        precision=precision,
        source=EngineSource(artifact_key(encoder, precision), source.path, source.sha256),
        tensorrt_version=machine.tensorrt,
        gpu_name=machine.gpu,
        compute_capability=machine.compute_capability,
        profiles={name: shapes.to_dict() for name, shapes in profiles.items()},
        max_batch=min(shapes.max[0] for shapes in profiles.values()),
        inputs=inputs,
        outputs=outputs,
        deployable=False,
        extra={
            "dims": spec_dims(encoder),
            "builder": {**settings, "strongly_typed": True, "tf32": False},
            "build_seconds": round(build_seconds, 1),
            "built": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )


def record_engine(root: Path, key: str, entry: EngineArtifact, timing_cache: str | None = None) -> None:
    """Add or replace one engine entry (and the engines directory's timing cache) in the manifest, atomically.

    The manifest is re-read just before the write, so entries another command added meanwhile survive. A rebuilt
    engine's old parity verdict is dropped: it judged other bytes.
    """
    bundle = Bundle.load(root)
    bundle.artifacts[key] = entry
    bundle.manifest.parity.pop(key, None)
    if timing_cache is not None and (Path(root) / timing_cache).is_file():
        bundle.manifest.tensorrt_timing_caches[str(Path(timing_cache).parent)] = FileEntry.describe(root, timing_cache)
    bundle.write_manifest()


# --- building (the only part that calls TensorRT, through Polygraphy) --------------------------------------------


def progress_monitor_class(base: type) -> type:
    """A progress monitor on ``base`` (``tensorrt.IProgressMonitor``): writes the builder's top two phase levels to
    ``stream``, indented, as they start, with their step counts and, when they finish, their duration. Never
    cancels."""

    class BuildProgress(base):
        def __init__(self, stream: TextIO, max_depth: int = 1):
            base.__init__(self)
            self.stream = stream
            self.max_depth = max_depth
            self._depth: dict[str, int] = {}
            self._started: dict[str, float] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self._depth[phase_name] = depth
            self._started[phase_name] = time.perf_counter()
            if depth <= self.max_depth:
                print(f"    {'  ' * depth}{phase_name} ({num_steps} steps)", file=self.stream, flush=True)

        def step_complete(self, phase_name, step):
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            depth = self._depth.pop(phase_name, 0)
            started = self._started.pop(phase_name, None)
            if depth <= self.max_depth and started is not None:
                seconds = time.perf_counter() - started
                print(f"    {'  ' * depth}{phase_name} done in {seconds:.1f}s", file=self.stream, flush=True)

    return BuildProgress


def build_plan(onnx_path: Path, profiles: dict[str, ShapeRange], workspace_gib: float | None, cache: Path,
               stream: TextIO | None = None) -> bytes:
    """Serialized engine for the ONNX graph at ``onnx_path``: strongly typed network, one optimisation profile,
    optional workspace limit, the timing cache at ``cache`` loaded if present and saved (atomically) after.
    ``stream``: where the builder's progress is written (None: nowhere)."""
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

    profile = Profile()
    for name, shapes in profiles.items():
        profile.add(name, min=shapes.min, opt=shapes.opt, max=shapes.max)
    limits = {trt.MemoryPoolType.WORKSPACE: int(workspace_gib * GIB)} if workspace_gib else None
    monitor = progress_monitor_class(trt.IProgressMonitor)(stream) if stream is not None else None
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    # File objects, not paths: Polygraphy then neither locks nor leaves ``.lock`` files, and the new cache is
    # renamed into place only once complete.
    previous = open(cache, "rb") if cache.is_file() else None
    try:
        config = CreateConfig(profiles=[profile], memory_pool_limits=limits, load_timing_cache=previous,
                              progress_monitor=monitor)
        # the progress monitor reports; Polygraphy's INFO lines would repeat it
        with atomic_path(cache) as temporary, open(temporary, "wb+") as new_cache, trt_backend.quiet_polygraphy():
            plan = EngineBytesFromNetwork(network, config=config, save_timing_cache=new_cache)()
    finally:
        if previous is not None:
            previous.close()
    return bytes(plan)


# --- the command ----------------------------------------------------------------------------------------------------


@dataclass
class EngineBuild:
    """What ``build_engines`` did: the ``machine`` it built for, the ``engines`` (key -> manifest entry after parity),
    the keys that are not deployable (``failed``), the parity report (None when not checked) and stage ``seconds``."""

    machine: trt_backend.Machine
    engines: dict[str, EngineArtifact]
    failed: list[str]
    parity: object | None
    seconds: dict


def run_engine_parity(root: Path, precision: str):
    """Parity of the engines just built through the ``tensorrt`` backend; records verdicts in the manifest."""
    from runtime.parity import run_parity

    return run_parity(root, precisions=(precision,), backend="tensorrt", write=True)


def build_engines(
    bundle_root: str | Path,
    precision: str = "fp16",
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int = DEFAULT_OPT_BATCH,
    opt_sequence: int = OPT_SEQUENCE,
    workspace_gib: float | None = None,
    check_parity: bool = True,
    machine: trt_backend.Machine | None = None,
    timer: StageTimer | None = None,
    builder: Callable[..., bytes] | None = None,
    parity: Callable[[Path, str], object] | None = None,
    progress: TextIO | None = None,
) -> EngineBuild:
    """Build, record and (``check_parity``) judge the two engines of ``precision``.

    builder: (onnx path, profiles, workspace_gib, timing cache path) -> plan bytes (default ``build_plan``, writing
    the builder's progress to ``progress``); parity: (bundle root, precision) -> parity report, recording verdicts
    in the manifest (default ``run_engine_parity``).

    Raises EngineBuildError before any build when this machine cannot build or the request is malformed,
    BundleError when the bundle or its graphs are not as listed.
    """
    if precision not in PRECISIONS:
        raise EngineBuildError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if max_batch < 1:
        raise EngineBuildError(f"--max-batch must be at least 1, got {max_batch}")
    if workspace_gib is not None and workspace_gib <= 0:
        raise EngineBuildError(f"--workspace-gib must be positive, got {workspace_gib}")
    profiles = {encoder: profile_shapes(encoder, max_batch, opt_batch, opt_sequence) for encoder in spec.ENCODERS}
    machine = check_build_prerequisites(machine)
    builder = builder or functools.partial(build_plan, stream=progress)
    parity = parity or run_engine_parity
    timer = timer or StageTimer()
    root = Path(bundle_root)
    bundle = Bundle.load(root)
    sources = {encoder: artifact_key(encoder, precision) for encoder in spec.ENCODERS}
    bundle.verify(list(sources.values()))  # an engine must come from the graph the manifest vouches for

    cache = timing_cache_path(machine.tensorrt, machine.compute_capability)
    settings = {"max_batch": max_batch, "opt_batch": opt_batch, "opt_sequence": opt_sequence,
                "workspace_gib": workspace_gib}
    keys = {}
    for encoder, source_key in sources.items():
        key = engine_key(encoder, precision, machine.tensorrt, machine.compute_capability)
        relative = engine_path(encoder, precision, machine.tensorrt, machine.compute_capability)
        source = bundle.artifact(source_key)
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with timer.stage(f"building {relative} from {source.path}"):
            plan = builder(bundle.path(source.path), profiles[encoder], workspace_gib, root / cache)
            with atomic_path(root / relative) as temporary:
                temporary.write_bytes(plan)
        entry = engine_entry(root, encoder, precision, machine, profiles[encoder], source, settings,
                             time.perf_counter() - started)
        record_engine(root, key, entry, cache)
        keys[encoder] = key

    report = None
    if check_parity:
        with timer.stage(f"parity of the {precision} engines on the probe"):
            report = parity(root, precision)
    artifacts = Bundle.load(root).artifacts
    engines = {key: artifacts[key] for key in keys.values()}
    failed = [key for key, entry in engines.items() if not entry.usable]
    return EngineBuild(machine, engines, failed, report, dict(timer.seconds))
