"""``ruclip-tiny bench BUNDLE``: latency and throughput of the runtime's backends against the original pipeline.

The baseline is the pipeline as it originally ran: the PyTorch reference in eager mode, FP32, rebuilt from the
bundle's ``reference.safetensors``, texts always padded to 77 tokens, images decoded and preprocessed one after
another with PIL. It is measured in the same run, with the same thread count, so every figure carries a ratio
(``baseline p50 / row p50``: above 1 means faster than the baseline). Every pipeline is loaded before timing
starts, and each configuration (workload x batch size) times all of them in alternating blocks seconds apart
(``measure_alternating``), so a ratio never compares two moments of a machine whose load drifts. Without torch
there is no baseline and the report says so. Nothing is written into the bundle.

Workloads (B = batch size):
    image            float32 [B, 3, 224, 224] preprocessed pixels (the probe's) -> the image encoder
    text-full        B texts that all fill 77 tokens -> tokenizer + text encoder
    text-captions    the probe's short captions repeated to B -> tokenizer + text encoder (the runtime trims the
                     padding columns, the baseline runs all 77)
    end-to-end       JPEG files -> decode + preprocess + image encoder (``Embedder.encode_images``), images/s
Both text paths tokenize with the runtime's fast tokenizer (ids identical to the original's), so the text ratio
measures the encoder and the padding it is fed, not the tokenizer implementation.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ruclip_tiny import spec
from ruclip_tiny.errors import RuclipTinyError
from runtime.bundle import PROBE_INPUTS, REFERENCE_WEIGHTS, Bundle

logger = logging.getLogger("runtime.bench")

BENCH_SCHEMA_VERSION = 1
BENCH_JSON = "bench.json"
BENCH_PLOT = "bench.png"
BASELINE_NAME = "torch eager fp32 (original pipeline)"
WORKLOADS = ("image", "text-full", "text-captions")

DEFAULT_BATCH_SIZES = (1, 8, 32)
DEFAULT_REPEATS = 20
DEFAULT_WARMUP = 2
# Per measured configuration and pipeline, after warm-up: stop once this much time is spent (settling calls
# included; at least MIN_REPEATS timed calls). The default run (1 backend, 3 workloads x 3 batch sizes, runtime +
# baseline, 64 JPEGs end to end) took about 4 minutes on 2 cores.
DEFAULT_TIME_BUDGET_S = 3.0
MIN_REPEATS = 3
DEFAULT_END_TO_END_IMAGES = 64

QUICK_BATCH_SIZES = (1, 8)
QUICK_REPEATS = 2
QUICK_WARMUP = 1
QUICK_END_TO_END_IMAGES = 4


class BenchError(RuclipTinyError, ValueError):
    """A benchmark that cannot be configured as asked (bad batch sizes, unknown backend, bundle without a probe)."""


# --- arguments --------------------------------------------------------------------------------------------------


def parse_batch_sizes(text: str, option: str = "--batch-sizes") -> tuple[int, ...]:
    """``"1,8,32"`` -> (1, 8, 32); raises BenchError naming ``option`` and the bad entry (not an integer, or < 1)."""
    sizes = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            size = int(part)
        except ValueError:
            raise BenchError(
                f"{option}: {part!r} is not an integer; give positive integers separated by commas, e.g. 1,8,32"
            ) from None
        if size < 1:
            raise BenchError(f"{option}: {size} is not a batch size; each must be at least 1, e.g. 1,8,32")
        sizes.append(size)
    return tuple(dict.fromkeys(sizes))


def parse_names(text: str, allowed: Sequence[str], option: str) -> tuple[str, ...]:
    """``"onnxruntime,torch"`` -> ("onnxruntime", "torch"), each checked against ``allowed``."""
    names = tuple(dict.fromkeys(name.strip() for name in str(text).split(",") if name.strip()))
    bad = [name for name in names if name not in allowed]
    if bad or not names:
        raise BenchError(f"{option}: {', '.join(bad) or 'nothing given'}; choose from {', '.join(allowed)}")
    return names


# --- timing -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one measured configuration."""

    seconds: list[float]

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.seconds) * 1e3, q))


def _synchronizer(device: str) -> Callable[[], None]:
    """What to call before reading the clock: waits for queued CUDA work (a no-op on the CPU)."""
    if device.startswith("cuda") and importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.synchronize
    return lambda: None


def measure_alternating(
    calls: Sequence[Callable[[], object]],
    repeats: int,
    warmup: int,
    time_budget_s: float,
    devices: Sequence[str] | None = None,
    block: int | None = None,
) -> list[Timing]:
    """Time several calls side by side, in alternating blocks: ``warmup`` untimed calls of each, then rounds in
    which every call (the first one rotating each round) runs one untimed settling call and then ``block`` timed
    ones back to back (default: a quarter of ``repeats``, fewer when the warm-up shows that the budget allows
    only a few calls, down to one, so slow calls alternate call by call). Stops when each has ``repeats``
    timings, or once the rounds have spent ``time_budget_s`` per call (at least MIN_REPEATS timings each, or
    ``repeats`` if fewer). Returns one Timing per call.

    Why blocks: on a shared machine the load drifts over minutes, and timing a baseline and a contender minutes
    apart measured the drift as often as the contender (image batch 8 gave 1.02x and 1.36x in two runs of the same
    code); alternating blocks seconds apart see the same machine. Why not call by call: a pipeline run right after
    another is slowed by what the other left behind (torch text at batch 8 took 99 ms right after an ONNX Runtime
    call, 61 ms 100 ms later, 49 ms back to back), so each block starts with an untimed call and times only calls
    that follow their own kind, as they would run alone.
    """
    devices = list(devices or ["cpu"] * len(calls))
    syncs = [_synchronizer(device) for device in devices]
    warm_seconds = 0.0
    for call, sync in zip(calls, syncs):
        for _ in range(warmup):
            start = time.perf_counter()
            call()
            sync()
            warm_seconds = max(warm_seconds, time.perf_counter() - start)
    if block is None:  # four rounds when the budget allows; as many rounds as the budget allows for slow calls
        block = max(1, -(-repeats // 4))
        if warm_seconds > 0:
            block = max(1, min(block, int(time_budget_s / (4 * warm_seconds))))
    seconds: list[list[float]] = [[] for _ in calls]
    floor = min(MIN_REPEATS, repeats)
    budget = time_budget_s * len(calls)
    spent, rounds, done = 0.0, 0, 0  # every round gives each call the same number of timings: ``done``
    while done < repeats and (done < floor or spent < budget):
        wanted = min(block, repeats - done)
        for step in range(len(calls)):
            index = (rounds + step) % len(calls)
            call, sync = calls[index], syncs[index]
            for timed in [False] + [True] * wanted:
                start = time.perf_counter()
                call()
                sync()
                elapsed = time.perf_counter() - start
                spent += elapsed
                if timed:
                    seconds[index].append(elapsed)
        rounds, done = rounds + 1, done + wanted
    return [Timing(values) for values in seconds]


# --- inputs -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchInputs:
    """pixels: float32 [Ni, 3, 224, 224] (the probe's); captions: the probe's texts under 77 tokens; long_texts: texts that each fill
    all 77 tokens; photos: JPEG paths for the end-to-end run."""

    pixels: np.ndarray
    captions: list[str]
    long_texts: list[str]
    photos: list[Path]


def load_inputs(bundle: Bundle, tokenizer) -> BenchInputs:
    """The probe set of ``bundle`` (pixels, captions), long texts built from the captions, and the demo photos."""
    from ruclip_tiny.demo import demo_photos

    path = bundle.path(PROBE_INPUTS)
    if not path.is_file():
        raise BenchError(f"{bundle.root} has no {PROBE_INPUTS}; re-export the bundle (ruclip-tiny export --force)")
    with np.load(path, allow_pickle=False) as probe:
        pixels = np.ascontiguousarray(probe["pixels"], dtype=np.float32)
        captions = [str(text) for text in probe["texts"]]
    # The probe also holds edge cases cut at 77 tokens (truncation checks); they belong to text-full, not here.
    lengths = tokenizer.encode(captions).lengths
    captions = [text for text, length in zip(captions, lengths) if length < spec.MAX_TEXT_LENGTH]
    if not len(pixels) or not captions:
        raise BenchError(f"{path} holds no images or no texts shorter than 77 tokens; re-export the bundle")
    # Each long text is every caption, starting from a different one, repeated until it overflows 77 tokens.
    long_texts = []
    for offset in range(len(captions)):
        rotated = captions[offset:] + captions[:offset]
        text = " ".join(rotated)
        while int(tokenizer.encode([text]).lengths[0]) < spec.MAX_TEXT_LENGTH:
            text = f"{text} {' '.join(rotated)}"
        long_texts.append(text)
    photos = [p for p in demo_photos() if p.suffix.lower() in (".jpg", ".jpeg")]
    return BenchInputs(pixels, captions, long_texts, photos)


def _fill(items: Sequence, count: int) -> list:
    """``items`` repeated (in order) to exactly ``count`` entries."""
    return [items[i % len(items)] for i in range(count)]


# --- the environment --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo (else what ``platform`` says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    names = ("ruclip-tiny", "numpy", "onnxruntime", "onnxruntime-gpu", "torch", "pillow", "tokenizers", "tensorrt")
    found = {name: _version(name) for name in names}
    return {"python": platform.python_version(), **{k: v for k, v in found.items() if v is not None}}


# --- the benchmark ----------------------------------------------------------------------------------------------


def _row(workload: str, pipeline: str, backend: str, precision: str, device: str, batch: int, timing: Timing,
         tokens_fed: int | None = None, mean_tokens: float | None = None) -> dict:
    p50 = timing.percentile_ms(50)
    row = {
        "workload": workload,
        "pipeline": pipeline,
        "backend": backend,
        "precision": precision,
        "device": device,
        "batch_size": batch,
        "repeats": len(timing.seconds),
        "p50_ms": p50,
        "p90_ms": timing.percentile_ms(90),
        "p99_ms": timing.percentile_ms(99),
        "mean_ms": float(np.mean(timing.seconds) * 1e3),
        "throughput_per_s": batch / (p50 / 1e3),
    }
    if tokens_fed is not None:
        row["tokens_fed"] = tokens_fed  # columns of input_ids the encoder ran on
        row["mean_tokens"] = mean_tokens  # real (unpadded) tokens per text
    return row


class _Baseline:
    """The original pipeline: RuCLIPTiny (eager, FP32) from the bundle's weights; texts at 77 tokens; PIL images."""

    def __init__(self, bundle: Bundle, tokenizer, threads: int):
        import torch

        from ruclip_tiny.checkpoint import load_checkpoint

        torch.set_num_threads(threads)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_checkpoint(bundle.path(REFERENCE_WEIGHTS)).to(self.device)
        self.tokenizer = tokenizer

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model.encode_image(self.torch.from_numpy(pixels).to(self.device)).cpu().numpy()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        encoded = self.tokenizer.encode(texts)  # always [B, 77]: the original padded to max_length
        with self.torch.inference_mode():
            ids = self.torch.from_numpy(encoded.input_ids).to(self.device)
            mask = self.torch.from_numpy(encoded.attention_mask).to(self.device)
            return self.model.encode_text(ids, mask).cpu().numpy()

    def encode_files(self, paths: list[Path], batch_size: int) -> np.ndarray:
        from ruclip_tiny.transform import image_transform, load_image

        transform = image_transform()
        rows = []
        for start in range(0, len(paths), batch_size):
            pixels = np.stack([transform(load_image(p)) for p in paths[start : start + batch_size]])
            rows.append(self.encode_pixels(pixels))
        return np.concatenate(rows)


def _text_shape(tokenizer, texts: list[str], trimmed: bool) -> tuple[int, float]:
    """(columns the encoder is fed, mean real tokens per text) for ``texts`` as one batch."""
    encoded = tokenizer.encode(texts)
    width = encoded.trimmed()[0].shape[1] if trimmed else encoded.input_ids.shape[1]
    return int(width), float(encoded.lengths.mean())


def run_bench(
    bundle: str | os.PathLike | Bundle,
    backends: Sequence[str] = ("onnxruntime",),
    precisions: Sequence[str] = ("fp32",),
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    repeats: int = DEFAULT_REPEATS,
    warmup: int = DEFAULT_WARMUP,
    out_dir: str | os.PathLike | None = None,
    include_baseline: bool = True,
    threads: int | None = None,
    text_batch_sizes: Sequence[int] | None = None,
    end_to_end_images: int = DEFAULT_END_TO_END_IMAGES,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Benchmark every backend x precision x batch size on the image, text-full and text-captions workloads, plus
    end-to-end JPEG images/s, against the torch eager FP32 baseline measured in the same run.

    threads: torch threads = ONNX Runtime intra-op threads (None: every core). text_batch_sizes: batch sizes of
    the text workloads (None: ``batch_sizes``). A backend/precision this machine cannot run is listed under
    ``skipped`` with the reason. Returns the report (see ``bench.json``); writes ``bench.json`` and ``bench.png``
    to ``out_dir`` when given. Latencies are milliseconds per batch.
    """
    from runtime.backends import BackendError
    from runtime.bundle import TOKENIZER_DIR
    from runtime.embedder import Embedder
    from runtime.tokenizer import FastTokenizer

    say = progress or (lambda message: None)
    batch_sizes = _checked_sizes(batch_sizes)
    text_batch_sizes = _checked_sizes(text_batch_sizes) if text_batch_sizes else batch_sizes
    if repeats < 1 or warmup < 0:
        raise BenchError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    threads = int(threads or os.cpu_count() or 1)
    if threads < 1:
        raise BenchError(f"--threads must be at least 1, got {threads}")
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    check_backends_can_run(bundle, backends, precisions)
    tokenizer = FastTokenizer.from_directory(bundle.path(TOKENIZER_DIR))
    inputs = load_inputs(bundle, tokenizer)
    timing = {"repeats": repeats, "warmup": warmup, "time_budget_s": time_budget_s}
    started = time.perf_counter()

    report: dict = {
        "schema_version": BENCH_SCHEMA_VERSION,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "bundle": str(bundle.root),
        "synthetic": bool((bundle.manifest.get("checkpoint") or {}).get("synthetic", bundle.manifest.get("synthetic"))),
        "machine": {
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "threads": threads,
            "platform": platform.platform(),
            # Other work on the machine moves every figure (OpenMP threads wait on each other): recorded, not judged.
            "load_average_1m_start": _load_average(),
        },
        "versions": versions(),
        "settings": {
            "backends": list(backends),
            "precisions": list(precisions),
            "batch_sizes": list(batch_sizes),
            "text_batch_sizes": list(text_batch_sizes),
            "end_to_end_images": end_to_end_images,
            **timing,
        },
        "baseline": {"name": BASELINE_NAME, "available": False, "reason": ""},
        "rows": [],
        "end_to_end": [],
        "skipped": [],
        "runtime": [],  # what each runtime pipeline ran, in the backend's words (precision, provider, micro-batches)
    }

    def text_batches(texts: list[str]):
        return {batch: _fill(texts, batch) for batch in text_batch_sizes}

    captions = text_batches(inputs.captions)
    long_texts = text_batches(inputs.long_texts)
    pixels = {batch: np.ascontiguousarray(_fill(inputs.pixels, batch)) for batch in batch_sizes}
    photos = _fill(inputs.photos, end_to_end_images) if end_to_end_images and inputs.photos else []
    e2e_batch = min(max(batch_sizes), len(photos) or 1)
    # The encoders are warm from the image workload by then; one more warm-up call covers decoding and the pool.
    e2e_warmup = min(warmup, 1)

    # --- every pipeline is loaded first, then each configuration times all of them side by side ---
    contenders: list[_Contender] = []
    if include_baseline and importlib.util.find_spec("torch") is not None:
        say("baseline: loading the torch reference")
        baseline = _Baseline(bundle, tokenizer, threads)
        report["baseline"].update(available=True, device=baseline.device, reason="")
        contenders.append(_Contender("baseline", "torch-eager", "fp32", baseline.device, baseline.encode_pixels,
                                     lambda texts, batch: baseline.encode_texts(texts), baseline.encode_files,
                                     trimmed=False))
    else:
        report["baseline"]["reason"] = (
            "not requested" if not include_baseline else "no baseline: torch is not installed"
        )
    embedders = []
    for backend in backends:
        for precision in precisions:
            options = {"threads": threads} if backend == "torch" else {}
            if backend == "onnxruntime":
                options = {"intra_op_threads": threads}
            say(f"{backend} {precision}: loading")
            try:
                embedder = Embedder.load(bundle, backend=backend, precision=precision, **options)
            except (BackendError, RuclipTinyError) as exc:
                report["skipped"].append({"backend": backend, "precision": precision, "reason": str(exc)})
                say(f"{backend} {precision}: skipped ({exc})")
                continue
            embedders.append(embedder)
            report["runtime"].append({"backend": backend, "precision": precision,
                                      "describe": embedder.backend.describe()})
            contenders.append(_Contender(
                "runtime", backend, precision, embedder.backend.device, embedder.backend.encode_pixels,
                lambda texts, batch, e=embedder: e.encode_texts_detailed(texts, batch_size=batch),
                lambda paths, batch, e=embedder: e.encode_images(paths, batch_size=batch),
                trimmed=embedder.trim_padding, backend_object=embedder.backend,
            ))
    try:
        if contenders:
            _run_workloads(report, contenders, tokenizer, pixels, {"text-full": long_texts, "text-captions": captions},
                           photos, e2e_batch, e2e_warmup, repeats, warmup, time_budget_s, say)
    finally:
        for embedder in embedders:
            embedder.close()

    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    report["machine"]["load_average_1m_end"] = _load_average()
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def check_backends_can_run(bundle: Bundle, backends: Sequence[str], precisions: Sequence[str]) -> None:
    """Refuse, in the time a plan takes and before the baseline runs for minutes, a requested backend that cannot
    run here at any of ``precisions`` (e.g. tensorrt without TensorRT, a GPU or engines): BenchError with each
    reason. A backend that runs at some of them only has the others listed under ``skipped`` of the report."""
    from runtime.backends import plan_backend

    for backend in backends:
        reasons = []
        for precision in precisions:
            try:
                plan_backend(bundle, backend, precision)
            except RuclipTinyError as exc:
                reasons.append(f"{precision}: {exc}")
        if len(reasons) == len(precisions):
            raise BenchError(
                f"--backends {backend} cannot run on this machine at --precisions {','.join(precisions)}: "
                + "; ".join(reasons)
            )


def write_report(report: dict, out_dir: str | os.PathLike) -> dict:
    """``bench.json`` and ``bench.png`` (when matplotlib is installed) in ``out_dir``; sets ``report["files"]``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["files"] = {"json": str(out / BENCH_JSON)}
    plot = plot_latency(report, out / BENCH_PLOT)
    if plot is not None:
        report["files"]["plot"] = str(plot)
    (out / BENCH_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def _row_key(row: dict) -> tuple:
    # end-to-end rows have no workload but a number of images
    return tuple(row.get(name) for name in ("workload", "images", "pipeline", "backend", "precision", "batch_size"))


def combine_rounds(reports: Sequence[dict]) -> dict:
    """One report from several complete runs of the same configuration: every figure is the median over the rounds
    (a ratio is the median of each round's own ratio, so a round's baseline and runtime stay paired), with
    ``rounds`` and the ratio range kept beside it. On a shared machine the load drifts between configurations of
    one run; the median over rounds is what is left when that drift is not systematic."""
    if len(reports) == 1:
        return reports[0]
    combined = json.loads(json.dumps(reports[0]))
    for section in ("rows", "end_to_end"):
        by_key: dict[tuple, list[dict]] = {}
        for report in reports:
            for row in report[section]:
                by_key.setdefault(_row_key(row), []).append(row)
        for row in combined[section]:
            rounds = by_key[_row_key(row)]
            for name in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_per_s", "images_per_s",
                         "baseline_p50_ms", "unfused_p50_ms", "fused_speedup"):
                values = [r[name] for r in rounds if r.get(name) is not None]
                if values:
                    row[name] = float(np.median(values))
            ratios = [r["ratio_vs_baseline"] for r in rounds if r.get("ratio_vs_baseline") is not None]
            if ratios:
                row["ratio_vs_baseline"] = float(np.median(ratios))
                row["ratio_range"] = [float(min(ratios)), float(max(ratios))]
            row["rounds"] = len(rounds)
    combined["rounds"] = len(reports)
    combined["elapsed_s"] = round(sum(r["elapsed_s"] for r in reports), 1)
    combined["machine"]["load_average_1m_end"] = reports[-1]["machine"]["load_average_1m_end"]
    return combined


@dataclass
class _Contender:
    """One pipeline the bench times: the baseline or a backend x precision of the runtime."""

    pipeline: str
    backend: str
    precision: str
    device: str
    pixels: Callable[[np.ndarray], object]
    texts: Callable[[list, int], object]
    files: Callable[[list, int], object]
    trimmed: bool
    backend_object: object = None


def _without_fused_attention(backend, call: Callable[[], object]) -> Callable[[], object] | None:
    """``call`` with the backend's fused text graph switched off for its duration, or None when it has none."""
    if getattr(backend, "textual_fused", None) is None:
        return None

    def unfused():
        fused, backend.textual_fused = backend.textual_fused, None
        try:
            return call()
        finally:
            backend.textual_fused = fused

    return unfused


def _run_workloads(report, contenders, tokenizer, pixels, text_workloads, photos, e2e_batch, e2e_warmup, repeats,
                   warmup, time_budget_s, say) -> None:
    """Every workload x batch size, all contenders in alternating blocks (``measure_alternating``); the rows go
    into ``report``."""
    devices = [c.device for c in contenders]
    rows: list[dict] = []
    for batch, batch_pixels in pixels.items():
        say(f"image batch {batch}: {len(contenders)} pipelines side by side")
        timings = measure_alternating([lambda c=c: c.pixels(batch_pixels) for c in contenders], repeats, warmup,
                                      time_budget_s, devices)
        rows += [_row("image", c.pipeline, c.backend, c.precision, c.device, batch, t)
                 for c, t in zip(contenders, timings)]
    for workload, batches in text_workloads.items():
        for batch, texts in batches.items():
            say(f"{workload} batch {batch}: {len(contenders)} pipelines side by side")
            calls = [lambda c=c: c.texts(texts, batch) for c in contenders]
            # the fused-attention lever: the same call with the fused text graph off, in the same rounds
            unfused = {i: _without_fused_attention(c.backend_object, calls[i]) for i, c in enumerate(contenders)}
            unfused = {i: call for i, call in unfused.items() if call is not None}
            timings = measure_alternating(calls + list(unfused.values()), repeats, warmup, time_budget_s,
                                          devices + [devices[i] for i in unfused])
            extra = dict(zip(unfused, timings[len(calls):]))
            for i, (contender, timing) in enumerate(zip(contenders, timings)):
                width, mean_tokens = _text_shape(tokenizer, texts, contender.trimmed)
                row = _row(workload, contender.pipeline, contender.backend, contender.precision, contender.device,
                           batch, timing, width, mean_tokens)
                if i in extra:
                    row["unfused_p50_ms"] = extra[i].percentile_ms(50)
                    row["fused_speedup"] = row["unfused_p50_ms"] / row["p50_ms"]
                rows.append(row)
    baseline = {(r["workload"], r["batch_size"]): r for r in rows if r["pipeline"] == "baseline"}
    for row in rows:
        base = baseline.get((row["workload"], row["batch_size"]))
        row["baseline_p50_ms"] = base["p50_ms"] if base else None
        row["ratio_vs_baseline"] = base["p50_ms"] / row["p50_ms"] if base else None
    report["rows"] += sorted(rows, key=lambda r: r["pipeline"] != "baseline")  # baseline rows first, order kept
    if not photos:
        return
    say(f"end-to-end {len(photos)} JPEGs: {len(contenders)} pipelines side by side")
    # at most MIN_REPEATS calls each: every call already runs many batches
    timings = measure_alternating([lambda c=c: c.files(photos, e2e_batch) for c in contenders],
                                  min(repeats, MIN_REPEATS), e2e_warmup, time_budget_s, devices)
    e2e = [_end_to_end(c.pipeline, c.backend, c.precision, c.device, len(photos), e2e_batch, t)
           for c, t in zip(contenders, timings)]
    base = next((r for r in e2e if r["pipeline"] == "baseline"), None)
    for row in e2e:
        row["ratio_vs_baseline"] = row["images_per_s"] / base["images_per_s"] if base else None
    report["end_to_end"] += e2e


def _end_to_end(pipeline, backend, precision, device, images, batch_size, timing: Timing) -> dict:
    """The end-to-end row: images/s of decoding all ``images`` JPEG files to features in batches of ``batch_size``."""
    p50 = timing.percentile_ms(50)
    return {
        "pipeline": pipeline,
        "backend": backend,
        "precision": precision,
        "device": device,
        "images": images,
        "batch_size": batch_size,
        "repeats": len(timing.seconds),
        "p50_ms": p50,
        "images_per_s": images / (p50 / 1e3),
    }


def _checked_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(sizes)
    if not sizes or any(not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 1 for s in sizes):
        raise BenchError(f"batch sizes must be positive integers, got {list(sizes)}")
    return tuple(dict.fromkeys(int(s) for s in sizes))


# --- output -----------------------------------------------------------------------------------------------------


def _label(row: dict) -> str:
    if row["pipeline"] == "baseline":
        return "baseline torch eager fp32"
    return f"{row['backend']} {row['precision']}"


def plot_latency(report: dict, path: str | os.PathLike) -> Path | None:
    """PNG: p50 latency (ms per batch) against batch size, one panel per workload, one line per pipeline, log
    axes; None when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        logger.info("matplotlib is not installed: no plot")
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(WORKLOADS), figsize=(5 * len(WORKLOADS), 4.2), squeeze=False)
    for ax, workload in zip(axes[0], WORKLOADS):
        rows = [r for r in report["rows"] if r["workload"] == workload]
        for label in dict.fromkeys(_label(r) for r in rows):
            series = sorted((r for r in rows if _label(r) == label), key=lambda r: r["batch_size"])
            x = [r["batch_size"] for r in series]
            ax.plot(x, [r["p50_ms"] for r in series], "--o" if label.startswith("baseline") else "-o", label=label)
            ax.fill_between(x, [r["p50_ms"] for r in series], [r["p90_ms"] for r in series], alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        sizes = sorted({r["batch_size"] for r in rows})
        if sizes:
            ax.set_xticks(sizes, [str(size) for size in sizes])
            ax.minorticks_off() if len(sizes) > 1 else None
        ax.set_xlabel("batch size")
        ax.set_ylabel("p50 latency, ms per batch (band: to p90)")
        ax.set_title(workload)
        ax.grid(True, which="both", alpha=0.3)
        if rows:
            ax.legend(fontsize=8)
    machine = report["machine"]
    fig.suptitle(f"ruclip-tiny bench: {machine['cpu_model']}, {machine['threads']} threads, {report['date'][:10]}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(report: dict) -> str:
    """The rows as a text table with ratios against the baseline."""
    lines = [
        f"{'workload':<14} {'pipeline':<26} {'batch':>5} {'tokens':>6} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
        f"{'items/s':>9} {'x baseline':>10} {'fused x':>8}"
    ]
    for workload in WORKLOADS:
        for row in sorted((r for r in report["rows"] if r["workload"] == workload),
                          key=lambda r: (r["pipeline"] != "baseline", _label(r), r["batch_size"])):
            ratio = row.get("ratio_vs_baseline")
            lines.append(
                f"{workload:<14} {_label(row):<26} {row['batch_size']:>5} {row.get('tokens_fed', ''):>6} "
                f"{row['p50_ms']:>9.2f} {row['p90_ms']:>9.2f} {row['p99_ms']:>9.2f} {row['throughput_per_s']:>9.1f} "
                f"{'no baseline' if ratio is None else f'{ratio:.2f}x':>10}"
                + (f" {row['fused_speedup']:>7.2f}x" if "fused_speedup" in row else "")
            )
    for row in report["end_to_end"]:
        ratio = row.get("ratio_vs_baseline")
        shown = "no baseline" if ratio is None else f"{ratio:.2f}x"
        lines.append(
            f"{'e2e ' + str(row['images']) + ' JPEGs':<14} {_label(row):<26} {row['batch_size']:>5} {'':>6} "
            f"{row['p50_ms']:>9.1f} {'':>9} {'':>9} {row['images_per_s']:>9.1f} {shown:>10}"
        )
    return "\n".join(lines)


def bench_command(args) -> int:
    """``ruclip-tiny bench``: parse the options, run, print the table; BenchError on bad options."""
    from runtime.backends import BACKENDS, PRECISIONS

    quick = bool(getattr(args, "quick", False))
    backends = parse_names(args.backends, [b for b in BACKENDS if b != "auto"], "--backends")
    precisions = parse_names(args.precisions, [p for p in PRECISIONS if p != "auto"], "--precisions")
    if args.batch_sizes is not None:
        batch_sizes = parse_batch_sizes(args.batch_sizes)
    else:
        batch_sizes = QUICK_BATCH_SIZES if quick else DEFAULT_BATCH_SIZES
    text_sizes = getattr(args, "text_batch_sizes", None)
    text_batch_sizes = parse_batch_sizes(text_sizes, "--text-batch-sizes") if text_sizes else None
    if args.threads is not None and args.threads < 1:
        raise BenchError(f"--threads must be at least 1, got {args.threads}")
    rounds = int(getattr(args, "rounds", 1) or 1)
    if rounds < 1:
        raise BenchError(f"--rounds must be at least 1, got {rounds}")
    print(f"ruclip-tiny bench {args.bundle}{' (quick)' if quick else ''}", file=sys.stderr)
    reports = []
    for round_index in range(rounds):
        if rounds > 1:
            print(f"  round {round_index + 1} of {rounds}", file=sys.stderr)
        reports.append(_run_from_args(args, quick, backends, precisions, batch_sizes, text_batch_sizes))
    report = combine_rounds(reports)
    if args.out is not None:
        write_report(report, args.out)
    machine = report["machine"]
    rounds_note = f"; median of {rounds} rounds" if rounds > 1 else ""
    print(f"{machine['cpu_model']}, {machine['threads']} threads; {report['date']}{rounds_note}")
    if not report["baseline"]["available"]:
        print(f"no baseline: {report['baseline']['reason']}")
    print(format_table(report))
    for skipped in report["skipped"]:
        print(f"skipped {skipped['backend']} {skipped['precision']}: {skipped['reason']}")
    if report.get("files"):
        print("wrote " + ", ".join(report["files"].values()))
    return 0


def _run_from_args(args, quick: bool, backends, precisions, batch_sizes, text_batch_sizes) -> dict:
    return run_bench(
        args.bundle,
        backends=backends,
        precisions=precisions,
        batch_sizes=batch_sizes,
        text_batch_sizes=text_batch_sizes,
        repeats=QUICK_REPEATS if quick else DEFAULT_REPEATS,
        warmup=QUICK_WARMUP if quick else DEFAULT_WARMUP,
        threads=args.threads,
        end_to_end_images=QUICK_END_TO_END_IMAGES if quick else DEFAULT_END_TO_END_IMAGES,
        time_budget_s=0.5 if quick else DEFAULT_TIME_BUDGET_S,
        progress=lambda message: print(f"  {message}", file=sys.stderr),
    )
