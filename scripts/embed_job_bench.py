"""Figures of the ``ruclip-tiny embed`` job: peak RSS for 2,000 and 20,000 small images (memory is bounded by the
shard, not the job), and end-to-end images/s from JPEG files, plain vs ``--ray local``, in the same run.

    python scripts/embed_job_bench.py memory BUNDLE --out DIR            # embed_memory.json
    python scripts/embed_job_bench.py throughput BUNDLE --out DIR        # embed_throughput.json
    python scripts/embed_job_bench.py resume BUNDLE --out DIR            # embed_resume.json

Each job runs as a child process (the command a user types); its peak RSS is that child's ``ru_maxrss`` from
``os.wait4`` (the Ray workers of a ``--ray`` job are other processes: not counted, said in the output). Images are
hard links to a few source files: the job opens and decodes every path, the disk holds only the sources.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def image_folder(root: Path, count: int, sources: list[Path]) -> Path:
    folder = root / f"images-{count}"
    folder.mkdir(parents=True)
    for index in range(count):
        source = sources[index % len(sources)]
        os.link(source, folder / f"{index:06d}{source.suffix}")
    return folder


def small_sources(root: Path, count: int = 16) -> list[Path]:
    """``count`` noise PNGs of 64x64 (a thumbnail-sized photo library)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = root / f"source-{index}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def run_job(arguments: list[str]) -> dict:
    """One ``ruclip-tiny embed`` child: wall seconds, its peak RSS (MiB), exit status."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "ruclip_tiny", "embed", *arguments, "--quiet"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    stderr = child.stderr.read().decode(errors="replace")
    child.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"embed {' '.join(arguments)} exited {code}:\n{stderr}")
    return {"seconds": round(seconds, 3), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def memory(args: argparse.Namespace) -> dict:
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        sources = small_sources(root)
        for count in args.counts:
            folder = image_folder(root, count, sources)
            out = root / f"out-{count}.npz"
            measured = run_job([str(args.bundle), "--images", str(folder), "--out", str(out),
                                "--backend", args.backend])
            measured.update(images=count, images_per_s=round(count / measured["seconds"], 1),
                            out_mib=round(out.stat().st_size / 2**20, 1))
            print(json.dumps(measured))
            results.append(measured)
    return {"what": "peak RSS of `ruclip-tiny embed --images DIR` (64x64 PNGs, shard size 256)", "runs": results}


def throughput(args: argparse.Namespace) -> dict:
    from ruclip_tiny.demo import demo_photos

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        folder = image_folder(root, args.images, demo_photos())  # JPEG photos, 0.3-1 MP
        for repeat in range(args.repeats):
            for mode, extra in (("plain", []), ("ray local", ["--ray", "local"])):
                out = root / f"out-{repeat}-{mode.replace(' ', '-')}.npz"
                measured = run_job([str(args.bundle), "--images", str(folder), "--out", str(out),
                                    "--backend", args.backend, *extra])
                measured.update(mode=mode, repeat=repeat, images=args.images,
                                images_per_s=round(args.images / measured["seconds"], 2))
                print(json.dumps(measured))
                results.append(measured)
    return {"what": "end-to-end `ruclip-tiny embed --images DIR` (process start to exit) on JPEG photos; "
            "--ray local starts a local Ray for the job; RSS of the driver process only", "runs": results}


def resume(args: argparse.Namespace) -> dict:
    """What an interruption costs: the same job run whole, and run until half its shards are written, stopped with
    SIGINT, then finished with ``--resume`` (two process starts, two bundle loads, the identity check of every input,
    the merge)."""
    import signal

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        folder = image_folder(root, args.images, small_sources(root))
        common = ["--images", str(folder), "--backend", args.backend, "--shard-size", str(args.shard_size)]
        for repeat in range(args.repeats):
            whole = run_job([str(args.bundle), *common, "--out", str(root / f"whole-{repeat}.npz")])
            out = root / f"resumed-{repeat}.npz"
            parts = Path(f"{out}.parts")
            start = time.perf_counter()
            child = subprocess.Popen([sys.executable, "-m", "ruclip_tiny", "embed", str(args.bundle), *common,
                                      "--out", str(out), "--quiet"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            half = args.images // args.shard_size // 2
            while child.poll() is None and len(list(parts.glob("shard-*.npz"))) < half:
                time.sleep(0.05)
            child.send_signal(signal.SIGINT)
            child.wait()
            interrupted = time.perf_counter() - start
            kept = len(list(parts.glob("shard-*.npz")))
            resumed = run_job([str(args.bundle), *common, "--out", str(out), "--resume"])
            measured = {"repeat": repeat, "images": args.images, "shard_size": args.shard_size,
                        "whole_s": whole["seconds"], "interrupted_s": round(interrupted, 3), "shards_kept": kept,
                        "resume_s": resumed["seconds"],
                        "overhead_s": round(interrupted + resumed["seconds"] - whole["seconds"], 3)}
            print(json.dumps(measured))
            results.append(measured)
    return {"what": "an embed job run whole vs stopped by SIGINT at half its shards and finished with --resume",
            "runs": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("memory", "throughput", "resume"))
    parser.add_argument("bundle")
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 20000], help="memory: images per job")
    parser.add_argument("--images", type=int, default=200, help="throughput: images per job")
    parser.add_argument("--repeats", type=int, default=2, help="throughput: plain / ray pairs; resume: pairs")
    parser.add_argument("--shard-size", type=int, default=50, help="resume: embed --shard-size")
    args = parser.parse_args()
    report = {"memory": memory, "throughput": throughput, "resume": resume}[args.mode](args)
    report.update(bundle=str(args.bundle), machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
                  date=datetime.date.today().isoformat())
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"embed_{args.mode}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
