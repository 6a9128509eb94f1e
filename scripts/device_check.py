"""The steps of ``scripts/device_check.sh``: one GPU check of the toolkit, each step a separate process with its own
time budget (the shell script enforces it with ``timeout``; each step also spreads its budget over its work so that
it normally finishes inside it and writes what it measured).

Steps (``python scripts/device_check.py STEP --out OUTDIR [--dry-run] [--bundle PATH] [--seconds S]``):
    preflight   python modules this run needs, the GPU; fails early naming what is missing     -> preflight.json
    export      the synthetic bundle into OUTDIR/bundle (unless --bundle)                         -> export.json
    parity      torch backend fp32 and fp16 on CUDA vs the bundle's probe reference, and on the
                stress inputs vs the FP32 reference on the CPU                                    -> parity.json
    bench       latency p50/p99 and throughput per encoder × batch for one variant (--variant
                eager|graphs|compile); CUDA events around device-resident inputs, after warm-up
                                                                                  -> bench-<variant>.json
    tensorrt    if tensorrt and polygraphy import: build-engines, their parity, their latency     -> tensorrt.json
    report      everything in one device_check.json, and the short table, printed last

``--dry-run`` runs the same steps on the CPU at tiny sizes (batch 1 and 2, few repeats, FP32 only): CUDA-only parts
are skipped with the reason, so CI proves the script end to end without a GPU.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runs from a copy of the repository without an installed package

BATCHES = (1, 8, 32, 128, 256)
DRY_BATCHES = (1, 2)
TEXT_LENGTH = 77  # text benchmarks run every row at the full 77 tokens: the slowest case the encoder sees
VARIANTS = ("eager", "graphs", "compile")
COMPILE_MODE = "default"  # the quickest to compile; "max-autotune" would not fit the budget
REPORT = "device_check.json"

# What each step imports (module name -> what it is for), so a missing one is named before any work starts.
NEEDS = {
    "export": {
        "torch": "the reference model", "timm": "the image encoder", "transformers": "the text encoder",
        "safetensors": "reference weights", "onnx": "ONNX graphs", "onnxscript": "torch.onnx export",
        "onnxruntime": "export parity", "polygraphy": "the probe's Polygraphy files", "PIL": "images",
    },
    "parity": {"torch": "the torch backend", "onnxruntime": "runtime.parity", "transformers": "stress-text tokens"},
    "bench": {"torch": "the torch backend"},
}


# --- small helpers -------------------------------------------------------------------------------------------------


def say(message: str) -> None:
    print(message, flush=True)


def write_json(path: Path, data: dict) -> None:
    from ruclip_tiny.fileio import atomic_write_json

    atomic_write_json(path, data)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def bundle_dir(args) -> Path:
    return Path(args.bundle) if args.bundle else Path(args.out) / "bundle"


def device_of(args) -> str:
    return "cpu" if args.dry_run else "cuda"


class Deadline:
    """The step's budget: ``left()`` seconds remain; ``share(n)`` is a fair slice for each of n remaining items."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.perf_counter())

    def share(self, items: int) -> float:
        return self.left() / max(items, 1)


# --- preflight -------------------------------------------------------------------------------------------------------


def missing_modules(needs: dict[str, str]) -> list[str]:
    return [f"{name} ({why})" for name, why in needs.items() if importlib.util.find_spec(name) is None]


def step_preflight(args) -> int:
    steps = ["parity", "bench"] + ([] if args.bundle else ["export"])
    needs = {name: why for step in steps for name, why in NEEDS[step].items()}
    missing = missing_modules(needs)
    info = {"date": now(), "dry_run": args.dry_run, "python": platform.python_version(), "missing": missing,
            "tensorrt": importlib.util.find_spec("tensorrt") is not None,
            "polygraphy": importlib.util.find_spec("polygraphy") is not None}
    if missing:
        write_json(Path(args.out) / "preflight.json", info)
        say("device check: missing Python modules: " + ", ".join(missing))
        say("  this run installs nothing from the network: install them into this Python, or put their wheels in a "
            "directory and pass --wheelhouse DIR (pure-Python wheels travel with the tree)")
        return 2
    import torch

    info["torch"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "compute_capability": f"{props.major}{props.minor}",
                       "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count()}
    elif not args.dry_run:
        write_json(Path(args.out) / "preflight.json", info)
        say(f"device check: torch {torch.__version__} sees no CUDA GPU (CPU-only build or no driver); "
            "use --dry-run to exercise the script on the CPU")
        return 2
    write_json(Path(args.out) / "preflight.json", info)
    gpu = info.get("gpu", {}).get("name", "none (dry run on the CPU)")
    say(f"device check: torch {torch.__version__}, GPU {gpu}, tensorrt {'yes' if info['tensorrt'] else 'no'}")
    return 0


# --- export ----------------------------------------------------------------------------------------------------------


def register_source_tree_metadata(out: Path) -> None:
    """Run from a source tree, ``importlib.metadata`` does not know ruclip-tiny (the export records its version):
    register the tree's version from pyproject.toml in a metadata-only directory under OUTDIR."""
    try:
        importlib.metadata.version("ruclip-tiny")
        return
    except importlib.metadata.PackageNotFoundError:
        pass
    import re

    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # tomllib is 3.11+; the project runs on 3.10
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE).group(1)
    site = out / ".source-tree-metadata"
    info = site / f"ruclip_tiny-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: ruclip-tiny\nVersion: {version}\n", encoding="utf-8")
    sys.path.append(str(site))
    importlib.invalidate_caches()


def step_export(args) -> int:
    from export.bundle import export_bundle

    out = Path(args.out)
    register_source_tree_metadata(out)
    started = time.perf_counter()
    manifest = export_bundle(out / "bundle", force=True)
    seconds = time.perf_counter() - started
    graphs = {k: e.usable for k, e in manifest.artifacts.items() if e.format == "onnx"}
    write_json(out / "export.json", {"date": now(), "seconds": round(seconds, 1), "deployable": graphs})
    say(f"export: {out / 'bundle'} in {seconds:.0f}s; ONNX graphs deployable: {graphs}")
    return 0


# --- parity ----------------------------------------------------------------------------------------------------------


def judge_set(candidate: dict, reference: dict, precision: str) -> dict:
    """Metrics and verdict of (image, text) features against a reference pair, with the precision's bars."""
    from runtime import parity

    thresholds = parity.thresholds_for(precision)
    entry = {}
    for name, kind in (("image_features", "images"), ("text_features", "texts")):
        metrics = parity.feature_metrics(candidate[name], reference[name])
        metrics.update(parity.similarity_metrics(
            candidate["image_features"] if kind == "images" else reference["image_features"],
            candidate["text_features"] if kind == "texts" else reference["text_features"],
            reference["image_features"], reference["text_features"], thresholds.clear_margin))
        failures = parity.judge(metrics, thresholds)
        entry[kind] = {**metrics, "passed": not failures, "failures": failures}
    entry["passed"] = all(part["passed"] for part in entry.values() if isinstance(part, dict))
    return entry


def _features(backend, inputs: dict) -> dict:
    return {
        "image_features": backend.encode_pixels(inputs["pixels"]),
        "text_features": backend.encode_tokens(inputs["input_ids"], inputs["attention_mask"]),
    }


def _probe_parity(bundle_root: Path, precision: str, device: str) -> dict:
    """The probe through ``runtime.parity.run_parity`` with the torch backend on ``device`` (nothing written)."""
    from runtime import parity

    report = parity.run_parity(bundle_root, precisions=(precision,), backend="torch", write=False,
                               backend_options={"device": device})
    return {"passed": report.passed, "results": report.to_json()["results"]}


def step_parity(args) -> int:
    from export.activations import stress_inputs
    from ruclip_tiny.tokenizer import load_tokenizer
    from runtime.backends.torch import TorchBackend
    from runtime.bundle import TOKENIZER_DIR, Bundle

    root = bundle_dir(args)
    bundle = Bundle.load(root)
    device = device_of(args)
    stress = stress_inputs(load_tokenizer(bundle.path(TOKENIZER_DIR)))
    # The stress reference: FP32 on the CPU, as the probe reference was computed.
    with TorchBackend.from_bundle(bundle, "fp32", device="cpu") as reference:
        stress_reference = _features(reference, stress)
    report = {"date": now(), "device": device, "results": {}, "skipped": {}}
    for precision in ("fp32", "fp16"):
        name = f"torch-{device}-{precision}"
        if precision == "fp16" and device == "cpu":
            report["skipped"][name] = "fp16 runs on CUDA only (the dry run is on the CPU)"
            say(f"parity: {name} skipped: {report['skipped'][name]}")
            continue
        probe = _probe_parity(root, precision, device)
        if device == "cpu":  # the dry run: the candidate is the reference itself (the path is exercised, not a GPU)
            stressed = judge_set(stress_reference, stress_reference, precision)
        else:
            with TorchBackend.from_bundle(bundle, precision, device=device) as backend:
                stressed = judge_set(_features(backend, stress), stress_reference, precision)
        report["results"][name] = {"probe": probe, "stress": stressed, "passed": probe["passed"] and stressed["passed"]}
        say(f"parity: {name}: probe {'PASS' if probe['passed'] else 'FAIL'}, "
            f"stress {'PASS' if stressed['passed'] else 'FAIL'}")
    from runtime.parity import json_safe as _json_safe

    write_json(Path(args.out) / "parity.json", _json_safe(report))
    return 0


# --- benchmarks ------------------------------------------------------------------------------------------------------


def cuda_event_timer():
    """A timer (``runtime.bench.timing``) reading CUDA events recorded around the call: what the device spent
    between the two."""
    import torch

    def timed(call) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    return timed


def timings_ms(call, device: str, warmup: int, repeats: int, min_repeats: int, seconds: float) -> list[float]:
    """Per-call milliseconds of ``call`` after ``warmup`` calls, by the bench's timing loop: CUDA events on a GPU
    (what the device spent between the two events), the wall clock on the CPU; at least ``min_repeats``, at most
    ``repeats``, stopping once ``seconds`` are spent (checked after every call)."""
    from runtime.bench import measure_alternating, wall_timer

    timer = cuda_event_timer() if device.startswith("cuda") else wall_timer()
    (timing,) = measure_alternating([call], repeats, warmup, seconds, timers=[timer], block=1,
                                    min_repeats=min_repeats)
    return [value * 1e3 for value in timing.seconds]


def summarize(times: list[float], batch: int) -> dict:
    p50 = float(np.percentile(times, 50))
    return {"repeats": len(times), "p50_ms": round(p50, 4), "p99_ms": round(float(np.percentile(times, 99)), 4),
            "mean_ms": round(float(np.mean(times)), 4), "throughput_per_s": round(batch / (p50 / 1e3), 1)}


def device_inputs(encoder: str, batch: int, device: str):
    import torch

    generator = torch.Generator().manual_seed(batch)
    if encoder == "visual":
        return (torch.randn(batch, 3, 224, 224, generator=generator).to(device),)
    ids = torch.randint(1000, 30000, (batch, TEXT_LENGTH), generator=generator)
    ids[:, 0] = 2  # a [CLS]-like first token; every position is a real token (mask all ones)
    return ids.to(device), torch.ones(batch, TEXT_LENGTH, dtype=torch.int64).to(device)


def bench_plan(args) -> list[tuple[str, str]]:
    """(precision, variant) pairs this run measures for ``args.variant``; FP32 eager is the baseline."""
    if args.variant == "eager":
        # eager-host: numpy in, numpy out through the backend, timed by the wall clock — comparable with TensorRT's
        return [("fp32", "eager")] + ([] if args.dry_run else [("fp16", "eager"), ("fp16", "eager-host")])
    return [("fp16", args.variant)]


def step_bench(args) -> int:
    out = Path(args.out) / f"bench-{args.variant}.json"
    device = device_of(args)
    report = {"date": now(), "device": device, "variant": args.variant, "rows": [], "skipped": {}, "errors": {}}
    if device == "cpu" and args.variant != "eager":
        report["skipped"][args.variant] = ("CUDA-only variant (the dry run is on the CPU)" if args.variant == "graphs"
                                           else "dry run: compiling takes minutes on a CPU")
        say(f"bench {args.variant}: skipped: {report['skipped'][args.variant]}")
        write_json(out, report)
        return 0
    import torch

    from runtime.backends.torch import TorchBackend
    from runtime.bundle import Bundle

    bundle = Bundle.load(bundle_dir(args))
    batches = DRY_BATCHES if args.dry_run else BATCHES
    repeats, min_repeats, warmup = (2, 1, 0) if args.dry_run else (200, 10, 5)
    deadline = Deadline(args.seconds)
    configs = bench_plan(args)
    for index, (precision, variant) in enumerate(configs):
        options = ({"cuda_graphs": True} if variant == "graphs" else
                   {"compile": COMPILE_MODE} if variant == "compile" else {})
        name = f"torch {variant} {precision}"
        try:
            backend = TorchBackend.from_bundle(bundle, precision, device=device, **options)
        except Exception as exc:  # a variant that cannot start is reported, the others still run
            report["errors"][name] = f"{type(exc).__name__}: {exc}"
            say(f"bench: {name} could not start: {exc}")
            continue
        todo = [(e, b) for e in ("visual", "textual") for b in batches]
        for position, (encoder, batch) in enumerate(todo):
            remaining = (len(configs) - index - 1) * len(todo) + len(todo) - position
            if deadline.left() < 1:
                report["skipped"][f"{name} {encoder} batch {batch}"] = "the step's time budget ran out"
                continue
            inputs = device_inputs(encoder, batch, device)
            host = variant == "eager-host"
            if host:
                inputs = tuple(tensor.cpu().numpy() for tensor in inputs)
                call = backend.encode_pixels if encoder == "visual" else backend.encode_tokens
            else:
                call = backend.encoders[encoder]
            try:
                with torch.inference_mode():
                    times = timings_ms(lambda call=call, inputs=inputs: call(*inputs), "cpu" if host else device,
                                       warmup, repeats, min_repeats, deadline.share(remaining))
            except Exception as exc:  # e.g. a graph capture or compile failure: record, go on
                report["errors"][f"{name} {encoder} batch {batch}"] = f"{type(exc).__name__}: {exc}"[:600]
                say(f"bench: {name} {encoder} batch {batch} failed: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            row = {"backend": "torch", "variant": variant, "precision": precision, "encoder": encoder,
                   "batch": batch, "seq": TEXT_LENGTH if encoder == "textual" else None,
                   "timing": "wall clock, numpy in and out" if host else
                   "cuda-events, device-resident inputs" if device == "cuda" else "wall clock (CPU)",
                   **summarize(times, batch)}
            report["rows"].append(row)
            say(f"bench: {name} {encoder} batch {batch}: p50 {row['p50_ms']:.3f} ms, p99 {row['p99_ms']:.3f} ms, "
                f"{row['throughput_per_s']:.0f}/s")
            write_json(out, report)  # after every row: a step stopped by its budget keeps what it measured
        backend.close()
        del backend
        if device == "cuda":
            torch.cuda.empty_cache()
    write_json(out, report)
    return 0


# --- TensorRT (only where it happens to be installed) ----------------------------------------------------------------


def step_tensorrt(args) -> int:
    out = Path(args.out) / "tensorrt.json"
    from runtime.backends import tensorrt as trt_backend

    machine = trt_backend.this_machine()
    report = {"date": now(), "machine": machine.__dict__, "rows": [], "skipped": None, "errors": {}}
    if machine.tensorrt is None or not machine.polygraphy or machine.compute_capability is None:
        report["skipped"] = f"TensorRT engines not built: {machine.describe()}" + (
            "" if machine.polygraphy else ", polygraphy not installed")
        say(f"tensorrt: skipped: {report['skipped']}")
        write_json(out, report)
        return 0
    from export.tensorrt import build_engines
    from runtime.bundle import Bundle

    deadline = Deadline(args.seconds)
    root = bundle_dir(args)
    max_batch = max(DRY_BATCHES if args.dry_run else BATCHES)
    try:
        result = build_engines(root, "fp16", max_batch=max_batch, opt_batch=min(32, max_batch))
    except Exception as exc:
        report["errors"]["build-engines"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        write_json(out, report)
        return 0
    report["engines"] = {key: {k: entry.to_json().get(k) for k in ("path", "size", "deployable", "build_seconds")}
                         for key, entry in result.engines.items()}
    report["failed"] = result.failed
    write_json(out, report)
    backend = trt_backend.from_bundle(Bundle.load(root), "fp16")
    batches = DRY_BATCHES if args.dry_run else BATCHES
    todo = [(e, b) for e in ("visual", "textual") for b in batches]
    rng = np.random.default_rng(0)
    for position, (encoder, batch) in enumerate(todo):
        if deadline.left() < 1:
            break
        if encoder == "visual":
            pixels = rng.normal(size=(batch, 3, 224, 224)).astype(np.float32)
            call = lambda pixels=pixels: backend.encode_pixels(pixels)  # noqa: E731
        else:
            ids = rng.integers(1000, 30000, (batch, TEXT_LENGTH))
            mask = np.ones_like(ids)
            call = lambda ids=ids, mask=mask: backend.encode_tokens(ids, mask)  # noqa: E731
        # The backend returns host arrays after synchronising its own stream: wall clock, host copies included.
        times = timings_ms(call, "cpu", 5, 200, 10, deadline.share(len(todo) - position))
        report["rows"].append({"backend": "tensorrt", "variant": "engine", "precision": "fp16", "encoder": encoder,
                               "batch": batch, "seq": TEXT_LENGTH if encoder == "textual" else None,
                               "timing": "wall clock, numpy in and out (host copies included)",
                               **summarize(times, batch)})
        write_json(out, report)
    backend.close()
    return 0


# --- report ----------------------------------------------------------------------------------------------------------


def format_table(report: dict) -> str:
    lines = []
    pre = report.get("preflight") or {}
    gpu = (pre.get("gpu") or {}).get("name", "no GPU (dry run)" if pre.get("dry_run") else "unknown")
    lines.append(f"device check {report['date']}: {gpu}, torch {pre.get('torch', '?')}")
    parity = report.get("parity") or {}
    for name, entry in (parity.get("results") or {}).items():
        lines.append(f"parity {name}: probe {'PASS' if entry['probe']['passed'] else 'FAIL'}, "
                     f"stress {'PASS' if entry['stress']['passed'] else 'FAIL'}")
    for name, why in (parity.get("skipped") or {}).items():
        lines.append(f"parity {name}: skipped ({why})")
    engines = (report.get("tensorrt") or {}).get("engines")
    if engines:
        lines.append("tensorrt engines: " + ", ".join(
            f"{k} {'deployable' if v['deployable'] else 'NOT deployable'}" for k, v in engines.items()))
    header = ("encoder", "backend", "variant", "prec", "batch", "p50 ms", "p99 ms", "items/s")
    rows = [(r["encoder"], r["backend"], r["variant"], r["precision"], str(r["batch"]), f"{r['p50_ms']:.3f}",
             f"{r['p99_ms']:.3f}", f"{r['throughput_per_s']:.0f}") for r in report["rows"]]
    rows.sort(key=lambda r: (r[0], int(r[4]), r[1], r[2], r[3]))
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *rows]]
    for name, why in report["not_measured"].items():
        lines.append(f"not measured: {name}: {why}")
    return "\n".join(lines)


def step_report(args) -> int:
    out = Path(args.out)
    report = {"date": now(), "dry_run": args.dry_run, "synthetic_weights": True, "rows": [], "not_measured": {}}
    for name in ("preflight", "export", "parity", "tensorrt"):
        report[name] = read_json(out / f"{name}.json")
    report["bench"] = {}
    for variant in VARIANTS:
        part = read_json(out / f"bench-{variant}.json")
        report["bench"][variant] = part
        if part is None:
            report["not_measured"][variant] = "the step did not run or was stopped before writing"
            continue
        report["rows"] += part["rows"]
        report["not_measured"].update(part.get("skipped", {}))
        report["not_measured"].update({k: f"failed: {v}" for k, v in part.get("errors", {}).items()})
    trt = report["tensorrt"] or {}
    report["rows"] += trt.get("rows", [])
    if trt.get("skipped"):
        report["not_measured"]["tensorrt"] = trt["skipped"]
    for name, step in (read_json(out / "steps.json") or {}).items():
        if step.get("status") != "ok":
            report["not_measured"][f"step {name}"] = step.get("status")
    report["steps"] = read_json(out / "steps.json")
    write_json(out / REPORT, report)
    say(f"wrote {out / REPORT}")
    say(format_table(report))
    return 0


STEPS = {"preflight": step_preflight, "export": step_export, "parity": step_parity, "bench": step_bench,
         "tensorrt": step_tensorrt, "report": step_report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=list(STEPS))
    parser.add_argument("--out", required=True, help="OUTDIR for the JSON files")
    parser.add_argument("--bundle",
                        help="an exported bundle to use (default OUTDIR/bundle, exported by the export step)")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU at tiny sizes; CUDA-only parts skipped")
    parser.add_argument("--variant", choices=VARIANTS, default="eager", help="bench: which torch variant")
    parser.add_argument("--seconds", type=float, default=60.0, help="this step's time budget")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return STEPS[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
