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
with the precision's thresholds; an engine that fails stays on disk for inspection, marked ``deployable: false``,
and the command exits 1.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ruclip_tiny import spec
from ruclip_tiny.errors import RuclipTinyError
from ruclip_tiny.fileio import atomic_path
from ruclip_tiny.progress import StageTimer
from runtime.backends import tensorrt as trt_backend
from runtime.bundle import Bundle, artifact_key, describe_file

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
        low, opt, high = zip(*triples)
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
            "Install it on the machine whose GPU will serve: pip install 'ruclip-tiny[gpu]'. Without TensorRT, "
            "serve the bundle's ONNX graphs (backend='onnxruntime') or use the torch backend on CUDA"
        )
    if not machine.polygraphy:
        raise EngineBuildError(
            "cannot build TensorRT engines: polygraphy, which drives the build, is not installed: "
            "pip install 'ruclip-tiny[gpu]'"
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
    source: dict,
    settings: dict,
    build_seconds: float,
) -> dict:
    """The manifest entry of a built engine (its file must exist): path, size, sha256, what it was built from and
    with, for which GPU, and its profiles. ``deployable`` starts False: only parity sets it."""
    relative = trt_backend.engine_path(encoder, precision, machine.tensorrt, machine.compute_capability)
    return describe_file(
        root,
        relative,
        format=trt_backend.ENGINE_FORMAT,
        encoder=encoder,
        precision=precision,
        source={"artifact": artifact_key(encoder, precision), "path": source["path"], "sha256": source["sha256"]},
        tensorrt_version=machine.tensorrt,
        gpu_name=machine.gpu,
        compute_capability=machine.compute_capability,
        profiles={name: shapes.to_dict() for name, shapes in profiles.items()},
        max_batch=min(shapes.max[0] for shapes in profiles.values()),
        builder={**settings, "strongly_typed": True, "tf32": False},
        build_seconds=round(build_seconds, 1),
        built=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        inputs=[{"name": t.name, "dtype": t.dtype, "shape": t.symbolic_shape} for t in spec.ENCODERS[encoder].inputs],
        outputs=[{"name": t.name, "dtype": t.dtype, "shape": t.symbolic_shape} for t in spec.ENCODERS[encoder].outputs],
        deployable=False,
    )


def record_engine(root: Path, key: str, entry: dict, timing_cache: str | None = None) -> None:
    """Add or replace one engine entry (and the engines directory's timing cache) in the manifest, atomically.

    The manifest is re-read just before the write, so entries another command added meanwhile survive. A rebuilt
    engine's old parity verdict is dropped: it judged other bytes.
    """
    bundle = Bundle.load(root)
    bundle.artifacts[key] = entry
    bundle.manifest.get("parity", {}).pop(key, None)
    if timing_cache is not None and (Path(root) / timing_cache).is_file():
        caches = bundle.manifest.setdefault("tensorrt_timing_caches", {})
        caches[str(Path(timing_cache).parent)] = describe_file(root, timing_cache)
    bundle.write_manifest()


# --- building (the only part that calls TensorRT, through Polygraphy) --------------------------------------------


def progress_monitor_class(base: type) -> type:
    """A progress monitor on ``base`` (``tensorrt.IProgressMonitor``): prints the builder's top two phase levels,
    indented, as they start, with their step counts and, when they finish, their duration. Never cancels."""

    class BuildProgress(base):
        def __init__(self, stream=None, max_depth: int = 1):
            base.__init__(self)
            self.stream = stream if stream is not None else sys.stdout
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
               stream=None) -> bytes:
    """Serialized engine for the ONNX graph at ``onnx_path``: strongly typed network, one optimisation profile,
    optional workspace limit, the timing cache at ``cache`` loaded if present and saved (atomically) after."""
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING  # the progress monitor reports; Polygraphy's INFO lines repeat it
    profile = Profile()
    for name, shapes in profiles.items():
        profile.add(name, min=shapes.min, opt=shapes.opt, max=shapes.max)
    limits = {trt.MemoryPoolType.WORKSPACE: int(workspace_gib * GIB)} if workspace_gib else None
    monitor = progress_monitor_class(trt.IProgressMonitor)(stream)
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    # File objects, not paths: Polygraphy then neither locks nor leaves ``.lock`` files, and the new cache is
    # renamed into place only once complete.
    previous = open(cache, "rb") if cache.is_file() else None
    try:
        config = CreateConfig(profiles=[profile], memory_pool_limits=limits, load_timing_cache=previous,
                              progress_monitor=monitor)
        with atomic_path(cache) as temporary, open(temporary, "wb+") as new_cache:
            plan = EngineBytesFromNetwork(network, config=config, save_timing_cache=new_cache)()
    finally:
        if previous is not None:
            previous.close()
    return bytes(plan)


# --- the command ----------------------------------------------------------------------------------------------------


def run_engine_parity(root: Path, precision: str) -> dict:
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
    parity: Callable[[Path, str], dict] | None = None,
) -> dict:
    """Build, record and (``check_parity``) judge the two engines of ``precision``.

    builder: (onnx path, profiles, workspace_gib, timing cache path) -> plan bytes (default ``build_plan``);
    parity: (bundle root, precision) -> parity report, recording verdicts in the manifest (default
    ``run_engine_parity``).

    Returns ``{"machine", "engines": {key: manifest entry after parity}, "failed": [keys not deployable],
    "parity": report or None, "seconds": {...}}``. Raises EngineBuildError before any build when this machine
    cannot build or the request is malformed, BundleError when the bundle or its graphs are not as listed.
    """
    if precision not in PRECISIONS:
        raise EngineBuildError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if max_batch < 1:
        raise EngineBuildError(f"--max-batch must be at least 1, got {max_batch}")
    if workspace_gib is not None and workspace_gib <= 0:
        raise EngineBuildError(f"--workspace-gib must be positive, got {workspace_gib}")
    profiles = {encoder: profile_shapes(encoder, max_batch, opt_batch, opt_sequence) for encoder in spec.ENCODERS}
    machine = check_build_prerequisites(machine)
    builder = builder or build_plan
    parity = parity or run_engine_parity
    timer = timer or StageTimer()
    root = Path(bundle_root)
    bundle = Bundle.load(root)
    sources = {encoder: artifact_key(encoder, precision) for encoder in spec.ENCODERS}
    bundle.verify(list(sources.values()))  # an engine must come from the graph the manifest vouches for

    cache = trt_backend.timing_cache_path(machine.tensorrt, machine.compute_capability)
    settings = {"max_batch": max_batch, "opt_batch": opt_batch, "opt_sequence": opt_sequence,
                "workspace_gib": workspace_gib}
    keys = {}
    for encoder, source_key in sources.items():
        key = trt_backend.engine_key(encoder, precision, machine.tensorrt, machine.compute_capability)
        relative = trt_backend.engine_path(encoder, precision, machine.tensorrt, machine.compute_capability)
        source = bundle.artifact(source_key)
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with timer.stage(f"building {relative} from {source['path']}"):
            plan = builder(root / source["path"], profiles[encoder], workspace_gib, root / cache)
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
    return {
        "machine": machine,
        "engines": engines,
        "failed": [key for key, entry in engines.items() if entry.get("deployable") is not True],
        "parity": report,
        "seconds": dict(timer.seconds),
    }


def build_engines_command(
    bundle: str,
    precision: str = "fp16",
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int = DEFAULT_OPT_BATCH,
    opt_sequence: int = OPT_SEQUENCE,
    workspace_gib: float | None = None,
) -> int:
    """``ruclip-tiny build-engines``: 0 built and deployable, 1 built but parity failed (engines kept, marked not
    deployable). Errors (no TensorRT/GPU, bad bundle) raise RuclipTinyError: the CLI prints them, exit 2."""
    root = Path(bundle)
    print(f"ruclip-tiny build-engines {root} ({precision}, batch 1..{max_batch}, opt {opt_batch})")
    result = build_engines(root, precision, max_batch, opt_batch, opt_sequence, workspace_gib)
    machine = result["machine"]
    if result["parity"] is not None:
        from runtime.parity import format_table

        print(format_table(result["parity"]))
    for key, entry in result["engines"].items():
        state = "deployable" if entry.get("deployable") is True else "NOT deployable"
        print(f"  {entry['path']}  {entry['size'] / 1e6:.1f} MB  {state}")
    if result["failed"]:
        print(
            f"PARITY FAILED for {', '.join(result['failed'])} ({machine.describe()}): kept for inspection, marked "
            f"not deployable — see {root}/parity/report.tensorrt.json"
        )
        return 1
    print(f"engines for {machine.describe()} built and marked deployable in {root}")
    return 0

