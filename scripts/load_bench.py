"""Load benchmark of ``ruclip-tiny serve`` on loopback: throughput and latency vs concurrency, batching on vs off.

Starts two servers on 127.0.0.1 from the same bundle, one with dynamic batching (``--max-batch``,
``--max-wait-ms``) and one with ``--no-batching``, and drives them in turn with closed-loop clients (each sends its
next request when the previous one is answered) at each concurrency, for text requests (one short caption each) and
image requests (one JPEG each). The two modes are measured interleaved, point by point, so a change in the machine's
load hits both alike. Per point: a warm-up that is not counted, then a fixed window in which completed requests are
counted; throughput, p50 and p99 latency, and the mean backend batch from the server's own /metrics.

    python scripts/load_bench.py bundle --out docs            # writes load_bench.json and bench-serve.png
    python scripts/load_bench.py bundle --mixed 32,8 --out DIR  # text p99 alone vs beside image requests
    python scripts/load_bench.py bundle --triton --concurrency 1,8,32 --out DIR  # serve vs a real tritonserver

``--mixed TEXT,IMAGE`` measures instead whether texts wait behind images: one server (batching on), TEXT closed-loop
text clients alone, then the same TEXT clients while IMAGE clients send ``--mixed-images`` images per request, the
two phases alternating ``--repeats`` times; it reports the texts' p50/p99 in each phase and their ratio
(written to mixed_bench.json). ``--triton`` drives ``ruclip-tiny serve`` and a real tritonserver serving the bundle's
``--platform python`` repository side by side (scripts/load_bench_triton.py; triton_bench.json, bench-triton.png).

Bounded: about (warmup + duration) x 2 modes x concurrencies per kind; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import aiohttp
import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = [
    "кошка спит на диване", "рыжая собака бежит по пляжу", "чашка кофе на деревянном столе", "ракета на старте",
    "астронавт в открытом космосе", "старые монеты на ладони", "спиральная галактика", "дети играют в парке",
    "красный автомобиль у дома", "горы под снегом на закате", "букет полевых цветов", "город ночью с высоты",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def start_server(bundle: str, port: int, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "ruclip_tiny.cli", "serve", bundle, "--port", str(port),
               "--log-level", "warning", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stdout.read()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s}s")


def batch_stats(url: str, kind: str) -> tuple[float, float]:
    """(sum of items, number of backend calls) for ``kind`` from the server's /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("ruclip_tiny_batch_items_sum", "ruclip_tiny_batch_items_count") and \
                    sample.labels.get("kind") == kind:
                values[sample.name] = sample.value
    return values.get("ruclip_tiny_batch_items_sum", 0.0), values.get("ruclip_tiny_batch_items_count", 0.0)


async def drive(url: str, path: str, bodies: list[bytes], concurrency: int, warmup_s: float, duration_s: float
                ) -> dict:
    """Closed-loop clients for warmup + duration; throughput and latencies of the requests that finish inside the
    window (a slow image request may have started during the warm-up).

    The client is aiohttp: on two cores httpx's async client tops out near 130 requests/s and slows down with more
    connections, which would measure the client instead of the server.
    """
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    window_start, window_end = start + warmup_s, start + warmup_s + duration_s
    headers = {"content-type": "application/json"}

    async def client(index: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        turn = index
        while loop.time() < window_end:
            body = bodies[turn % len(bodies)]
            turn += concurrency
            sent = loop.time()
            try:
                async with session.post(path, data=body, headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
            except aiohttp.ClientError:
                ok = False
            done = loop.time()
            if window_start <= done <= window_end:
                if ok:
                    latencies.append(done - sent)
                else:
                    errors += 1

    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(i, session) for i in range(concurrency)))
    values = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "throughput_rps": len(latencies) / duration_s,
        "p50_ms": float(np.percentile(values, 50)) if len(values) else None,
        "p99_ms": float(np.percentile(values, 99)) if len(values) else None,
    }


def measure_point(batch_counts, run, label: str) -> dict:
    """One measured point: ``run()``'s figures (called once, between two ``batch_counts()``: items and calls so
    far) plus the mean backend batch over it and the load average; printed as one line starting with ``label``."""
    items_before, calls_before = batch_counts()
    point = run()
    items_after, calls_after = batch_counts()
    calls = calls_after - calls_before
    point.update(mean_batch=(items_after - items_before) / calls if calls else 0.0, loadavg_1m=os.getloadavg()[0])
    print(f"{label} {point['throughput_rps']:7.1f} req/s  p50 {_ms(point['p50_ms'])}  p99 {_ms(point['p99_ms'])}  "
          f"mean batch {point['mean_batch']:.1f}  errors {point['errors']}  load {point['loadavg_1m']:.1f}",
          flush=True)
    return point


def summarise(points: list[dict]) -> dict:
    """One figure per mode from repeated runs: medians of throughput, p50, p99 and mean batch; counts summed."""

    def median(key):
        values = [p[key] for p in points if p[key] is not None]
        return float(np.median(values)) if values else None

    return {"throughput_rps": median("throughput_rps"), "p50_ms": median("p50_ms"), "p99_ms": median("p99_ms"),
            "mean_batch": median("mean_batch"), "requests": sum(p["requests"] for p in points),
            "errors": sum(p["errors"] for p in points), "loadavg_1m": median("loadavg_1m"), "runs": points}


BATCHING_SERIES = ((True, "batching on", "tab:blue"), (False, "batching off", "tab:orange"))


def plot(results: list[dict], path: Path, key: str = "batching", series=BATCHING_SERIES,
         title: str = "ruclip-tiny serve on loopback: one caption or one JPEG per request") -> None:
    """Throughput and latency against concurrency, a column per kind, a line per ``series`` entry
    (value of ``result[key]``, label, colour)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install '.[plots]' in a checkout of ruclip-tiny)")
        return
    kinds = sorted({r["kind"] for r in results}, reverse=True)
    figure, axes = plt.subplots(2, len(kinds), figsize=(6 * len(kinds), 8), squeeze=False)
    for column, kind in enumerate(kinds):
        for value, label, color in series:
            rows = sorted((r for r in results if r["kind"] == kind and r[key] == value),
                          key=lambda r: r["concurrency"])
            conc = [r["concurrency"] for r in rows]
            axes[0][column].plot(conc, [r["throughput_rps"] for r in rows], "o-", color=color, label=label)
            axes[1][column].plot(conc, [r["p50_ms"] for r in rows], "o-", color=color, label=f"p50, {label}")
            axes[1][column].plot(conc, [r["p99_ms"] for r in rows], "x--", color=color, label=f"p99, {label}")
        axes[0][column].set(title=f"{kind}: throughput", xlabel="concurrent clients", ylabel="requests/s",
                            xscale="log")
        axes[0][column].set_ylim(bottom=0)
        axes[1][column].set(title=f"{kind}: latency", xlabel="concurrent clients", ylabel="ms", xscale="log",
                            yscale="log")
        for axis in (axes[0][column], axes[1][column]):
            axis.set_xticks([r["concurrency"] for r in results if r["kind"] == kind])
            axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def markdown(results: list[dict]) -> str:
    lines = ["| kind | clients | on: req/s | off: req/s | speed-up | on: p50 / p99 | off: p50 / p99 | "
             "on: mean batch | requests counted (on / off) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind in sorted({r["kind"] for r in results}, reverse=True):
        for conc in sorted({r["concurrency"] for r in results if r["kind"] == kind}):
            on = next(r for r in results if r["kind"] == kind and r["concurrency"] == conc and r["batching"])
            off = next(r for r in results if r["kind"] == kind and r["concurrency"] == conc and not r["batching"])
            ratio = on["throughput_rps"] / off["throughput_rps"] if off["throughput_rps"] else float("nan")
            lines.append(
                f"| {kind} | {conc} | {on['throughput_rps']:.1f} | {off['throughput_rps']:.1f} | {ratio:.2f}× | "
                f"{_ms(on['p50_ms'])} / {_ms(on['p99_ms'])} | {_ms(off['p50_ms'])} / {_ms(off['p99_ms'])} | "
                f"{on['mean_batch']:.1f} | {on['requests']} / {off['requests']} |"
            )
    return "\n".join(lines)


def mixed_burst(url: str, text_bodies: list[bytes], image_bodies: list[bytes], text_clients: int,
                image_clients: int, warmup_s: float, duration_s: float) -> dict:
    """One phase of the mixed benchmark: ``text_clients`` text clients, and ``image_clients`` image clients at the
    same time when that is > 0; the figures of each kind."""

    async def both() -> list[dict]:
        runs = [drive(url, "/v1/embeddings/text", text_bodies, text_clients, warmup_s, duration_s)]
        if image_clients:
            runs.append(drive(url, "/v1/embeddings/image", image_bodies, image_clients, warmup_s, duration_s))
        return await asyncio.gather(*runs)

    results = asyncio.run(both())
    return {"text": results[0], "image": results[1] if image_clients else None, "loadavg_1m": os.getloadavg()[0]}


def run_mixed(args, text_bodies: list[bytes], photos: list[Path]) -> int:
    """Text latency alone vs beside image requests, on one server with batching on (see the module docstring)."""
    text_clients, image_clients = (int(value) for value in args.mixed.split(","))
    image_bodies = [
        json.dumps({"images": [base64.b64encode(photos[(start + i) % len(photos)].read_bytes()).decode()
                               for i in range(args.mixed_images)]}).encode()
        for start in range(len(photos))
    ]
    extra = ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--max-queue-items", "4096"]
    extra += ["--threads", str(args.threads)] if args.threads else []
    extra += ["--max-image-batch", str(args.max_image_batch)] if args.max_image_batch else []
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(args.bundle, port, extra)
    load_before = os.getloadavg()
    started = time.time()
    phases: dict[str, list[dict]] = {"text_only": [], "mixed": []}
    try:
        wait_ready(url, server)
        for repeat in range(args.repeats):
            # alternate which phase goes first, so a drift in machine load does not favour one
            for phase in (("text_only", "mixed") if repeat % 2 == 0 else ("mixed", "text_only")):
                point = mixed_burst(url, text_bodies, image_bodies, text_clients,
                                    image_clients if phase == "mixed" else 0, args.mixed_warmup_seconds,
                                    args.mixed_seconds)
                phases[phase].append(point)
                image = point["image"]
                image_part = "" if image is None else (
                    f" | images {image['throughput_rps']:.2f} req/s p99 {_ms(image['p99_ms'])} "
                    f"errors {image['errors']}")
                print(f"{phase:9} text {point['text']['throughput_rps']:6.1f} req/s p50 {_ms(point['text']['p50_ms'])} "
                      f"p99 {_ms(point['text']['p99_ms'])} errors {point['text']['errors']}{image_part} "
                      f"load {point['loadavg_1m']:.1f}", flush=True)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()

    def text_summary(points: list[dict]) -> dict:
        return summarise([p["text"] | {"mean_batch": None, "loadavg_1m": p["loadavg_1m"]} for p in points])

    alone, beside = text_summary(phases["text_only"]), text_summary(phases["mixed"])
    ratio = beside["p99_ms"] / alone["p99_ms"] if alone["p99_ms"] and beside["p99_ms"] else None
    images = [p["image"] for p in phases["mixed"]]
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(), "cpus": os.cpu_count(), "threads": args.threads,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "seconds": time.time() - started,
        "settings": {"text_clients": text_clients, "image_clients": image_clients,
                     "images_per_request": args.mixed_images, "max_batch": args.max_batch,
                     "max_image_batch": args.max_image_batch, "max_wait_ms": args.max_wait_ms,
                     "warmup_seconds": args.mixed_warmup_seconds, "seconds": args.mixed_seconds,
                     "repeats": args.repeats},
        "text_only": alone, "mixed": beside, "mixed_text_p99_ratio": ratio,
        "mixed_images": {"throughput_rps": float(np.median([i["throughput_rps"] for i in images])),
                         "p99_ms": float(np.median([i["p99_ms"] for i in images if i["p99_ms"] is not None] or [0])),
                         "requests": sum(i["requests"] for i in images),
                         "errors": sum(i["errors"] for i in images)},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mixed_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"text p99 alone {_ms(alone['p99_ms'])} (p50 {_ms(alone['p50_ms'])}, {alone['requests']} requests); "
          f"beside {image_clients} image clients x {args.mixed_images} images: {_ms(beside['p99_ms'])} "
          f"(p50 {_ms(beside['p50_ms'])}, {beside['requests']} requests); ratio "
          f"{'n/a' if ratio is None else f'{ratio:.2f}'}; images {report['mixed_images']['throughput_rps']:.2f} "
          f"req/s, {report['mixed_images']['requests']} answered, errors "
          f"{beside['errors'] + report['mixed_images']['errors']}")
    print(f"load average before {load_before}, after {report['loadavg_after']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    parser.add_argument("--kinds", default="text,image")
    parser.add_argument("--text-seconds", type=float, default=3.0, help="measured window per text point")
    parser.add_argument("--image-seconds", type=float, default=10.0, help="measured window per image point")
    parser.add_argument("--warmup-seconds", type=float, default=1.0, help="uncounted start of every text point")
    parser.add_argument("--image-warmup-seconds", type=float, default=3.0, help="uncounted start of every image point")
    parser.add_argument("--image-seconds-per-client", type=float, default=0.4,
                        help="image windows grow to this x clients (warm-up to half of it), so that a point at 64 "
                        "clients still counts many completed requests (an image takes ~0.1-0.3 s on a CPU core)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure every point this many times, modes alternating; report medians")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-image-batch", type=int, default=None, help="serve --max-image-batch (batching on)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1,
                        help="ONNX Runtime intra-op threads of each server (default 1: on 2 cores a second, spinning "
                        "pool thread competes with the event loop and the clients)")
    parser.add_argument("--mixed", default=None, metavar="TEXT,IMAGE",
                        help="measure text latency alone vs beside image requests: TEXT text clients, IMAGE image "
                        "clients (e.g. 32,8); replaces the on/off comparison")
    parser.add_argument("--mixed-images", type=int, default=8, help="images per image request with --mixed")
    parser.add_argument("--mixed-seconds", type=float, default=15.0, help="measured window per --mixed phase")
    parser.add_argument("--mixed-warmup-seconds", type=float, default=5.0,
                        help="uncounted start of every --mixed phase (image requests pile up during it)")
    parser.add_argument("--triton", action="store_true",
                        help="compare ruclip-tiny serve with a real tritonserver (python backend) on the same "
                        "requests; replaces the on/off comparison")
    parser.add_argument("--out", default="docs", help="directory for load_bench.json and bench-serve.png")
    args = parser.parse_args(argv)

    concurrencies = [int(c) for c in args.concurrency.split(",")]
    kinds = args.kinds.split(",")
    photos = sorted((ROOT / "ruclip_tiny" / "assets" / "demo").glob("*.jpg"))
    image_bodies = [json.dumps({"images": [base64.b64encode(p.read_bytes()).decode()]}).encode() for p in photos]
    text_bodies = [json.dumps({"texts": [caption]}, ensure_ascii=False).encode() for caption in CAPTIONS]
    if args.mixed:
        return run_mixed(args, text_bodies, photos)
    if args.triton:
        from load_bench_triton import run_triton

        return run_triton(args, text_bodies, image_bodies, photos)
    work = {"text": ("/v1/embeddings/text", text_bodies, args.warmup_seconds, args.text_seconds),
            "image": ("/v1/embeddings/image", image_bodies, args.image_warmup_seconds, args.image_seconds)}

    common = ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
              "--max-queue-items", "4096"] + (["--threads", str(args.threads)] if args.threads else [])
    ports = {True: free_port(), False: free_port()}
    image_batch = ["--max-image-batch", str(args.max_image_batch)] if args.max_image_batch else []
    servers = {True: start_server(args.bundle, ports[True], common + image_batch),
               False: start_server(args.bundle, ports[False], common + ["--no-batching"])}
    urls = {mode: f"http://127.0.0.1:{port}" for mode, port in ports.items()}
    load_before = os.getloadavg()
    started = time.time()
    results = []
    try:
        for mode in (True, False):
            wait_ready(urls[mode], servers[mode])
        for kind in kinds:
            path, bodies, base_warmup, base_seconds = work[kind]
            for index, concurrency in enumerate(concurrencies):
                warmup, seconds = base_warmup, base_seconds
                if kind == "image":
                    seconds = max(base_seconds, concurrency * args.image_seconds_per_client)
                    warmup = max(base_warmup, seconds / 2)
                runs: dict[bool, list[dict]] = {True: [], False: []}
                for repeat in range(args.repeats):
                    # alternate which mode goes first, so a drift in machine load does not favour one
                    for batching in ((True, False) if (index + repeat) % 2 == 0 else (False, True)):
                        point = measure_point(
                            partial(batch_stats, urls[batching], kind),
                            partial(asyncio.run, drive(urls[batching], path, bodies, concurrency, warmup, seconds)),
                            f"{kind:5} c={concurrency:<3} batching={'on ' if batching else 'off'}",
                        )
                        runs[batching].append(point)
                for batching, points in runs.items():
                    results.append(summarise(points) | dict(kind=kind, batching=batching, concurrency=concurrency,
                                                            window_s=seconds))
    finally:
        for process in servers.values():
            process.terminate()
        for process in servers.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "seconds": time.time() - started,
        "settings": {"max_batch": args.max_batch, "max_image_batch": args.max_image_batch,
                     "max_wait_ms": args.max_wait_ms,
                     "text_seconds": args.text_seconds, "image_seconds": args.image_seconds,
                     "warmup_seconds": args.warmup_seconds, "image_warmup_seconds": args.image_warmup_seconds,
                     "image_seconds_per_client": args.image_seconds_per_client, "repeats": args.repeats},
        "results": results,
    }
    (out / "load_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, out / "bench-serve.png")
    print(markdown(results))
    print(f"load average before {load_before}, after {report['loadavg_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
