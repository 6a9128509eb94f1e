"""A bench run: latency and throughput of the runtime's backends against the original pipeline.

The baseline is the pipeline as it originally ran: the PyTorch reference in eager mode, FP32, rebuilt from the
bundle's ``reference.safetensors``, texts always padded to 77 tokens, images decoded and preprocessed one after
another with PIL. It is measured in the same run, with the same thread count, so every figure carries a ratio
(``baseline p50 / row p50``: above 1 means faster than the baseline). Every pipeline is loaded before timing
starts, and each configuration (workload x batch size) times all of them in alternating blocks seconds apart
(``timing.measure_alternating``), so a ratio never compares two moments of a machine whose load drifts. Without torch
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
import importlib.util
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ruclip_tiny.errors import RuclipTinyError
from runtime.bundle import TOKENIZER_DIR, Bundle

from .environment import cpu_model, load_average, versions
from .inputs import fill, load_inputs
from .report import write_report
from .settings import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_END_TO_END_IMAGES,
    DEFAULT_REPEATS,
    DEFAULT_TIME_BUDGET_S,
    DEFAULT_WARMUP,
    BenchError,
    checked_sizes,
)
from .timing import MIN_REPEATS, Timer, Timing, measure_alternating, wall_timer

BENCH_SCHEMA_VERSION = 1
BASELINE_NAME = "torch eager fp32 (original pipeline)"


@dataclass
class Contender:
    """One pipeline the bench times: the baseline or a backend x precision of the runtime.

    pixels(pixels), texts(texts, batch), files(paths, batch): the three calls it is timed on; trimmed: whether its
    texts run without padding columns; unfused_texts: the same text call with the fused text graph off (the
    fused-attention lever), None when the pipeline has no fused graph.
    """

    pipeline: str
    backend: str
    precision: str
    device: str
    pixels: Callable[[np.ndarray], object]
    texts: Callable[[list, int], object]
    files: Callable[[list, int], object]
    trimmed: bool
    timer: Timer
    unfused_texts: Callable[[list, int], object] | None = None


def _backend_options(backend: str, threads: int) -> dict:
    """The thread count as each backend takes it."""
    return {"onnxruntime": {"intra_op_threads": threads}, "torch": {"threads": threads}}.get(backend, {})


def _fuses_attention(bundle: Bundle, backend: str, precision: str, options: dict) -> bool:
    """Whether ``backend`` opened with ``options`` reads a fused text graph (its plan reads more artifacts than the
    plan with ``fused_attention=False``)."""
    from runtime.backends import plan_backend

    if backend != "onnxruntime":  # the one backend with a fused text graph
        return False
    planned = plan_backend(bundle, backend, precision, **options).artifacts
    return planned != plan_backend(bundle, backend, precision, **options, fused_attention=False).artifacts


def _row(workload: str, contender: Contender, batch: int, timing: Timing, tokens_fed: int | None = None,
         mean_tokens: float | None = None) -> dict:
    p50 = timing.percentile_ms(50)
    row = {
        "workload": workload,
        "pipeline": contender.pipeline,
        "backend": contender.backend,
        "precision": contender.precision,
        "device": contender.device,
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


def _end_to_end(contender: Contender, images: int, batch_size: int, timing: Timing) -> dict:
    """The end-to-end row: images/s of decoding all ``images`` JPEG files to features in batches of ``batch_size``."""
    p50 = timing.percentile_ms(50)
    return {
        "pipeline": contender.pipeline,
        "backend": contender.backend,
        "precision": contender.precision,
        "device": contender.device,
        "images": images,
        "batch_size": batch_size,
        "repeats": len(timing.seconds),
        "p50_ms": p50,
        "images_per_s": images / (p50 / 1e3),
    }


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
    to ``out_dir`` when given. Latencies are milliseconds per batch. Raises BenchError on settings it cannot run.
    """
    from runtime.tokenizer import FastTokenizer

    say = progress or (lambda message: None)
    batch_sizes = checked_sizes(batch_sizes)
    text_batch_sizes = checked_sizes(text_batch_sizes) if text_batch_sizes else batch_sizes
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
        "synthetic": bundle.synthetic,
        "machine": {
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "threads": threads,
            "platform": platform.platform(),
            # Other work on the machine moves every figure (OpenMP threads wait on each other): recorded, not judged.
            "load_average_1m_start": load_average(),
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
        return {batch: fill(texts, batch) for batch in text_batch_sizes}

    workloads = {
        "pixels": {batch: np.ascontiguousarray(fill(inputs.pixels, batch)) for batch in batch_sizes},
        "texts": {"text-full": text_batches(inputs.long_texts), "text-captions": text_batches(inputs.captions)},
        "photos": fill(inputs.photos, end_to_end_images) if end_to_end_images and inputs.photos else [],
    }
    embedders: list = []
    try:
        contenders = _load_contenders(report, bundle, tokenizer, backends, precisions, threads, include_baseline,
                                      embedders, say)
        if contenders:
            _run_workloads(report, contenders, tokenizer, workloads, max(batch_sizes), repeats, warmup,
                           time_budget_s, say)
    finally:
        for embedder in embedders:
            embedder.close()

    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    report["machine"]["load_average_1m_end"] = load_average()
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def _load_contenders(report: dict, bundle: Bundle, tokenizer, backends, precisions, threads: int,
                     include_baseline: bool, embedders: list, say) -> list[Contender]:
    """Every pipeline, loaded before any is timed: the baseline (when torch is installed) and each backend x
    precision that loads (the others go under ``skipped``). The embedders opened are appended to ``embedders``."""
    from runtime.embedder import Embedder

    contenders: list[Contender] = []
    if include_baseline and importlib.util.find_spec("torch") is not None:
        from .baseline import TorchBaseline, cuda_synchronizer

        say("baseline: loading the torch reference")
        baseline = TorchBaseline(bundle, tokenizer, threads)
        report["baseline"].update(available=True, device=baseline.device, reason="")
        contenders.append(Contender("baseline", "torch-eager", "fp32", baseline.device, baseline.encode_pixels,
                                    lambda texts, batch: baseline.encode_texts(texts), baseline.encode_files,
                                    trimmed=False, timer=wall_timer(cuda_synchronizer(baseline.device))))
    else:
        report["baseline"]["reason"] = (
            "not requested" if not include_baseline else "no baseline: torch is not installed"
        )
    for backend in backends:
        for precision in precisions:
            options = _backend_options(backend, threads)
            say(f"{backend} {precision}: loading")
            try:
                embedder = Embedder.load(bundle, backend=backend, precision=precision, **options)
            except RuclipTinyError as exc:
                report["skipped"].append({"backend": backend, "precision": precision, "reason": str(exc)})
                say(f"{backend} {precision}: skipped ({exc})")
                continue
            embedders.append(embedder)
            unfused = None
            if _fuses_attention(bundle, backend, precision, options):
                # the fused-attention lever: the same pipeline opened with the fused text graph off
                unfused = Embedder.load(bundle, backend=backend, precision=precision, fused_attention=False, **options)
                embedders.append(unfused)
            report["runtime"].append({"backend": backend, "precision": precision,
                                      "describe": embedder.backend.describe()})
            contenders.append(Contender(
                "runtime", backend, precision, embedder.backend.device, embedder.backend.encode_pixels,
                lambda texts, batch, e=embedder: e.encode_texts_detailed(texts, batch_size=batch),
                lambda paths, batch, e=embedder: e.encode_images(paths, batch_size=batch),
                trimmed=embedder.trim_padding, timer=wall_timer(_synchronizer(embedder.backend.device)),
                unfused_texts=None if unfused is None else
                (lambda texts, batch, e=unfused: e.encode_texts_detailed(texts, batch_size=batch)),
            ))
    return contenders


def _synchronizer(device: str) -> Callable[[], None] | None:
    """Waiting for queued CUDA work where a pipeline runs on CUDA (torch's, imported only then)."""
    if not device.startswith("cuda"):
        return None
    from .baseline import cuda_synchronizer

    return cuda_synchronizer(device)


def _run_workloads(report: dict, contenders: list[Contender], tokenizer, workloads: dict, largest_batch: int,
                   repeats: int, warmup: int, time_budget_s: float, say) -> None:
    """Every workload x batch size, all contenders in alternating blocks (``measure_alternating``); the rows go
    into ``report``. ``workloads``: pixels {batch: array}, texts {workload: {batch: texts}}, photos [paths]."""
    timers = [c.timer for c in contenders]
    rows: list[dict] = []
    for batch, batch_pixels in workloads["pixels"].items():
        say(f"image batch {batch}: {len(contenders)} pipelines side by side")
        timings = measure_alternating([lambda c=c, p=batch_pixels: c.pixels(p) for c in contenders], repeats, warmup,
                                      time_budget_s, timers)
        rows += [_row("image", c, batch, t) for c, t in zip(contenders, timings)]
    for workload, batches in workloads["texts"].items():
        for batch, texts in batches.items():
            say(f"{workload} batch {batch}: {len(contenders)} pipelines side by side")
            calls = [lambda c=c, t=texts, b=batch: c.texts(t, b) for c in contenders]
            # the fused-attention lever: the same call with the fused text graph off, in the same rounds
            unfused = {i: (lambda c=c, t=texts, b=batch: c.unfused_texts(t, b))
                       for i, c in enumerate(contenders) if c.unfused_texts is not None}
            timings = measure_alternating(calls + list(unfused.values()), repeats, warmup, time_budget_s,
                                          timers + [timers[i] for i in unfused])
            extra = dict(zip(unfused, timings[len(calls):]))
            for i, (contender, timing) in enumerate(zip(contenders, timings)):
                width, mean_tokens = _text_shape(tokenizer, texts, contender.trimmed)
                row = _row(workload, contender, batch, timing, width, mean_tokens)
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
    photos = workloads["photos"]
    if not photos:
        return
    batch = min(largest_batch, len(photos))
    say(f"end-to-end {len(photos)} JPEGs: {len(contenders)} pipelines side by side")
    # At most MIN_REPEATS calls each: every call already runs many batches. The encoders are warm from the image
    # workload by then; one more warm-up call covers decoding and the pool.
    timings = measure_alternating([lambda c=c: c.files(photos, batch) for c in contenders],
                                  min(repeats, MIN_REPEATS), min(warmup, 1), time_budget_s, timers)
    e2e = [_end_to_end(c, len(photos), batch, t) for c, t in zip(contenders, timings)]
    base = next((r for r in e2e if r["pipeline"] == "baseline"), None)
    for row in e2e:
        row["ratio_vs_baseline"] = row["images_per_s"] / base["images_per_s"] if base else None
    report["end_to_end"] += e2e


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
