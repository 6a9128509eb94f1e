"""The Triton target of scripts/load_bench.py (``--triton``): the same requests through a real tritonserver and
through ``ruclip-tiny serve``, side by side in one run.

Writes a ``--platform python`` repository of the bundle (the python backend is the one the nvidia-pytriton wheel's
tritonserver has), starts it with scripts/triton_local.sh and ``ruclip-tiny serve`` beside it, then drives both with
closed-loop clients at each concurrency, alternating which goes first: text requests of one caption
(``ruclip_tiny_text``: TEXT BYTES [1]) and image requests of one JPEG (``ruclip_tiny_image``: IMAGE BYTES [1]), the
JSON requests of the other endpoints for serve. Triton is driven through tritonclient's asyncio HTTP client.

Writes triton_bench.json and bench-triton.png to --out; the same for a GPU with perf_analyzer, for users who have it
(glibc 2.38):
    perf_analyzer -m ruclip_tiny_text -u 127.0.0.1:8000 --concurrency-range 1:32:*2 --input-data texts.json
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import httpx
import load_bench as base
import numpy as np

DEPS_SCRIPT = base.ROOT / "scripts" / "triton_python_deps.sh"
SERVER_SCRIPT = base.ROOT / "scripts" / "triton_local.sh"
MODELS = {"text": ("ruclip_tiny_text", "TEXT", "ruclip_tiny_textual"),
          "image": ("ruclip_tiny_image", "IMAGE", "ruclip_tiny_visual")}


def deps_directory() -> Path:
    """The python models' numpy<2 dependencies (scripts/triton_python_deps.sh), built once into the cache that the
    Triton tests use too (keyed by the script's contents and the Python version)."""
    cache = Path(os.environ.get("RUCLIP_TINY_CACHE", Path.home() / ".cache" / "ruclip-tiny"))
    key = hashlib.sha256(DEPS_SCRIPT.read_bytes()).hexdigest()[:12]
    directory = cache / f"triton-python-deps-py{sys.version_info[0]}.{sys.version_info[1]}-{key}"
    if not directory.is_dir():
        subprocess.run([str(DEPS_SCRIPT), str(directory)], check=True, env={**os.environ, "PYTHON": sys.executable})
    return directory


def start_triton(bundle: str, work: Path, max_queue_delay_us: int) -> tuple[subprocess.Popen, int]:
    from export.triton import write_triton_repository

    repo = work / "repo"
    write_triton_repository(bundle, repo, platform="python", python_path=[str(base.ROOT), str(deps_directory())],
                            max_queue_delay_us=max_queue_delay_us)
    ports = [base.free_port() for _ in range(3)]
    log = open(work / "tritonserver.log", "wb")  # noqa: SIM115 — the server's stdout for its lifetime
    process = subprocess.Popen(
        [str(SERVER_SCRIPT), str(repo), "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
         "--metrics-port", str(ports[2])],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHON": sys.executable},
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tritonserver exited: see {work / 'tritonserver.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{ports[0]}/v2/health/ready", timeout=2).status_code == 200:
                return process, ports[0]
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError("tritonserver not ready after 600 s")


def triton_batch(port: int, model: str) -> tuple[int, int]:
    """(inferences, executions) of ``model`` so far, from Triton's statistics."""
    stats = httpx.get(f"http://127.0.0.1:{port}/v2/models/{model}/stats", timeout=10).json()["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


async def drive_triton(port: int, model: str, name: str, payloads: list[bytes], concurrency: int, warmup_s: float,
                       duration_s: float) -> dict:
    """Closed-loop tritonclient (asyncio HTTP) clients, each sending one item per request; figures as
    ``load_bench.drive``."""
    import tritonclient.http.aio as triton_http
    from tritonclient.utils import InferenceServerException

    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    window_start, window_end = start + warmup_s, start + warmup_s + duration_s
    client = triton_http.InferenceServerClient(f"127.0.0.1:{port}", conn_limit=concurrency)

    async def one_client(index: int) -> None:
        nonlocal errors
        turn = index
        while loop.time() < window_end:
            tensor = triton_http.InferInput(name, [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[payloads[turn % len(payloads)]]], dtype=object))
            turn += concurrency
            sent = loop.time()
            try:
                await client.infer(model, [tensor])
                ok = True
            except InferenceServerException:
                ok = False
            done = loop.time()
            if window_start <= done <= window_end:
                if ok:
                    latencies.append(done - sent)
                else:
                    errors += 1

    try:
        await asyncio.gather(*(one_client(i) for i in range(concurrency)))
    finally:
        await client.close()
    values = np.asarray(latencies) * 1000
    return {"requests": len(latencies), "errors": errors, "throughput_rps": len(latencies) / duration_s,
            "p50_ms": float(np.percentile(values, 50)) if len(values) else None,
            "p99_ms": float(np.percentile(values, 99)) if len(values) else None}


def markdown(results: list[dict]) -> str:
    lines = ["| kind | clients | serve: req/s | triton: req/s | triton / serve | serve: p50 / p99 | "
             "triton: p50 / p99 | triton mean batch |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind in ("text", "image"):
        for conc in sorted({r["concurrency"] for r in results if r["kind"] == kind}):
            serve, triton = (next(r for r in results if r["kind"] == kind and r["concurrency"] == conc
                                  and r["target"] == target) for target in ("serve", "triton"))
            ratio = triton["throughput_rps"] / serve["throughput_rps"] if serve["throughput_rps"] else float("nan")
            lines.append(
                f"| {kind} | {conc} | {serve['throughput_rps']:.1f} | {triton['throughput_rps']:.1f} | {ratio:.2f}× | "
                f"{base._ms(serve['p50_ms'])} / {base._ms(serve['p99_ms'])} | "
                f"{base._ms(triton['p50_ms'])} / {base._ms(triton['p99_ms'])} | {triton['mean_batch']:.1f} |")
    return "\n".join(lines)


def run_triton(args, text_bodies: list[bytes], image_bodies: list[bytes], photos: list[Path]) -> int:
    """``load_bench.py --triton``: serve and Triton side by side at each concurrency; medians of ``--repeats``."""
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    payloads = {"text": [caption.encode("utf-8") for caption in base.CAPTIONS],
                "image": [photo.read_bytes() for photo in photos]}
    serve_work = {"text": ("/v1/embeddings/text", text_bodies), "image": ("/v1/embeddings/image", image_bodies)}
    windows = {"text": (args.warmup_seconds, args.text_seconds),
               "image": (args.image_warmup_seconds, args.image_seconds)}
    extra = ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--max-queue-items", "4096"]
    extra += ["--threads", str(args.threads)] if args.threads else []
    port = base.free_port()
    serve = base.start_server(args.bundle, port, extra)
    url = f"http://127.0.0.1:{port}"
    load_before, started, results = os.getloadavg(), time.time(), []
    with tempfile.TemporaryDirectory(prefix="ruclip-triton-bench-") as work:
        triton, triton_port = start_triton(args.bundle, Path(work), int(args.max_wait_ms * 1000))
        try:
            base.wait_ready(url, serve)
            for kind in args.kinds.split(","):
                model, name, encoder = MODELS[kind]
                warmup, seconds = windows[kind]
                for index, concurrency in enumerate(concurrencies):
                    runs: dict[str, list[dict]] = {"serve": [], "triton": []}
                    for repeat in range(args.repeats):
                        order = ("serve", "triton") if (index + repeat) % 2 == 0 else ("triton", "serve")
                        for target in order:
                            if target == "serve":
                                point = base.measure_point(
                                    partial(base.batch_stats, url, kind),
                                    partial(asyncio.run, base.drive(url, *serve_work[kind], concurrency, warmup,
                                                                    seconds)),
                                    f"{kind:5} c={concurrency:<3} {target:6}")
                            else:
                                point = base.measure_point(
                                    partial(triton_batch, triton_port, encoder),
                                    partial(asyncio.run, drive_triton(triton_port, model, name, payloads[kind],
                                                                      concurrency, warmup, seconds)),
                                    f"{kind:5} c={concurrency:<3} {target:6}")
                            runs[target].append(point)
                    for target, points in runs.items():
                        results.append(base.summarise(points) | dict(kind=kind, target=target,
                                                                     concurrency=concurrency, window_s=seconds))
        finally:
            for process in (serve, triton):
                process.terminate()
            for process in (serve, triton):
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "cpu": base.cpu_model(), "cpus": os.cpu_count(), "threads": args.threads,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "seconds": time.time() - started,
              "settings": {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "repeats": args.repeats,
                           "text_seconds": args.text_seconds, "image_seconds": args.image_seconds,
                           "warmup_seconds": args.warmup_seconds,
                           "image_warmup_seconds": args.image_warmup_seconds},
              "results": results}
    (out / "triton_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    base.plot(results, out / "bench-triton.png", key="target",
              series=(("serve", "serve", "tab:blue"), ("triton", "triton", "tab:green")),
              title="ruclip-tiny serve vs Triton (python backend, CPU) on loopback: one caption or one JPEG each")
    print(markdown(results))
    print(f"load average before {load_before}, after {report['loadavg_after']}")
    return 0
