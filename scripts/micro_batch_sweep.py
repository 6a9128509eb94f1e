"""How big should one ONNX Runtime call be on this CPU? Times the onnxruntime backend's encoders with each batch cut
into micro-batches of different sizes, side by side, and writes the speed-up over whole-batch calls.

The onnxruntime backend's CPU defaults (``CPU_IMAGE_MICRO_BATCH``, ``CPU_TEXT_MICRO_BATCH_TOKENS`` in
``runtime/backends/onnxruntime.py``) come from this sweep. Each size runs on a backend opened with that micro-batch
option, all sizes timed side by side in alternating blocks (``runtime.bench.measure_alternating``), so a ratio never
compares two moments of a machine whose load drifts. Rows are checked equal to the whole-batch call.

    python scripts/micro_batch_sweep.py bundle --out DIR      # micro_batch_sweep.json and micro-batch-sweep.png

Inputs: the probe's preprocessed images, and texts at two widths: the bench's long texts (77 tokens) and its
captions (padding trimmed to the longest, as the runtime feeds them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime import bench  # noqa: E402
from runtime.backends import open_backend  # noqa: E402
from runtime.backends.onnxruntime import even_part_rows, rows_for_tokens  # noqa: E402
from runtime.bundle import TOKENIZER_DIR, Bundle  # noqa: E402
from runtime.tokenizer import FastTokenizer  # noqa: E402

WHOLE = 0  # micro-batch size 0: the whole batch in one call


def _sizes(text: str, option: str) -> list[int]:
    return [WHOLE] + [size for size in bench.parse_batch_sizes(text, option)]


def _sweep(call_with, sizes: list[int], repeats: int, say, label: str) -> list[dict]:
    """Time ``call_with(size)`` for every size side by side; rows with p50 and the speed-up over WHOLE."""
    outputs = {size: call_with(size) for size in sizes}
    for size, output in outputs.items():
        difference = float(np.abs(output - outputs[WHOLE]).max())
        if difference > 1e-4:
            raise SystemExit(f"{label}: micro-batch {size} changed the features by {difference:.2e}")
    say(f"{label}: {len(sizes)} sizes side by side")
    timings = bench.measure_alternating([lambda s=size: call_with(s) for size in sizes], repeats, 1, 60.0)
    whole = timings[0].percentile_ms(50)
    return [{"size": size, "p50_ms": t.percentile_ms(50), "p90_ms": t.percentile_ms(90),
             "speedup_vs_whole": whole / t.percentile_ms(50), "calls": len(t.seconds)}
            for size, t in zip(sizes, timings)]


def _open(bundle, threads: int, **micro_batches):
    """The onnxruntime backend on the CPU without the fused text graph, with the micro-batch options given (the
    others at their defaults)."""
    return open_backend(bundle, "onnxruntime", "fp32", providers="cpu", intra_op_threads=threads,
                        fused_attention=False, **micro_batches)


class _Backends:
    """One backend per micro-batch size of one option (``image_micro_batch`` or ``text_micro_batch_tokens``; size
    0: whole batches), opened at first use and closed together."""

    def __init__(self, bundle, threads: int, option: str):
        self.bundle, self.threads, self.option = bundle, threads, option
        self.opened: dict[int, object] = {}

    def __call__(self, size: int):
        if size not in self.opened:
            self.opened[size] = _open(self.bundle, self.threads, **{self.option: size})
        return self.opened[size]

    def __enter__(self) -> _Backends:
        return self

    def __exit__(self, *_exc_info) -> None:
        for backend in self.opened.values():
            backend.close()


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args) -> dict:
    bundle = Bundle.load(args.bundle)
    tokenizer = FastTokenizer.from_directory(bundle.path(TOKENIZER_DIR))
    inputs = bench.load_inputs(bundle, tokenizer)
    with _open(bundle, args.threads) as defaults:  # what the sweep measures against: the backend's defaults here
        described = defaults.describe()
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_model": bench.cpu_model(), "cpu_count": os.cpu_count(), "threads": args.threads},
        "versions": bench.versions(),
        "backend": described,
        "images": [],
        "texts": [],
    }

    with _Backends(bundle, args.threads, "image_micro_batch") as backends:
        for batch in bench.parse_batch_sizes(args.image_batches, "--image-batches"):
            pixels = np.ascontiguousarray(bench.fill(inputs.pixels, batch))
            sizes = [size for size in _sizes(args.image_sizes, "--image-sizes") if size < batch]
            rows = _sweep(lambda size, p=pixels: backends(size).encode_pixels(p), sizes, args.repeats, say,
                          f"images x {batch}")
            report["images"] += [{"batch": batch, **row} for row in rows]

    with _Backends(bundle, args.threads, "text_micro_batch_tokens") as backends:
        for name, texts in (("77 tokens", inputs.long_texts), ("captions", inputs.captions)):
            for batch in bench.parse_batch_sizes(args.text_batches, "--text-batches"):
                ids, mask = tokenizer.encode(bench.fill(texts, batch)).trimmed()
                width = ids.shape[1]
                sizes = [t for t in _sizes(args.text_tokens, "--text-tokens") if t < batch * width]
                rows = _sweep(lambda tokens, i=ids, m=mask: backends(tokens).encode_tokens(i, m), sizes,
                              args.repeats, say, f"{name} x {batch} (width {width})")
                report["texts"] += [{"texts": name, "batch": batch, "width": width,
                                     "rows_per_call": even_part_rows(batch, rows_for_tokens(row["size"] or None,
                                                                                            width)),
                                     **row}
                                    for row in rows]
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for batch in dict.fromkeys(row["batch"] for row in report["images"]):
        rows = [r for r in report["images"] if r["batch"] == batch and r["size"]]
        left.plot([r["size"] for r in rows], [r["speedup_vs_whole"] for r in rows], "-o", label=f"batch {batch}")
    left.set_xlabel("images per ONNX Runtime call")
    left.set_title("image encoder")
    for key in dict.fromkeys((r["texts"], r["batch"]) for r in report["texts"]):
        rows = [r for r in report["texts"] if (r["texts"], r["batch"]) == key and r["size"]]
        right.plot([r["size"] for r in rows], [r["speedup_vs_whole"] for r in rows], "-o",
                   label=f"{key[0]}, batch {key[1]}")
    right.set_xlabel("tokens per ONNX Runtime call (rows = tokens // width)")
    right.set_title("text encoder")
    for ax in (left, right):
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_ylabel("speed-up over one call per batch (p50)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    machine = report["machine"]
    fig.suptitle(f"micro-batches, onnxruntime fp32: {machine['cpu_model']}, {machine['threads']} threads, "
                 f"{report['date'][:10]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--out", required=True, help="folder for micro_batch_sweep.json and micro-batch-sweep.png")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads (default: all)")
    parser.add_argument("--image-batches", default="8,32")
    parser.add_argument("--image-sizes", default="1,2,4,8", help="images per call to try (whole batch always)")
    parser.add_argument("--text-batches", default="128")
    parser.add_argument("--text-tokens", default="256,512,1024,2048,4096", help="tokens per call to try")
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args(argv)
    report = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "micro_batch_sweep.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    plot(report, out / "micro-batch-sweep.png")
    print(f"{'workload':<28} {'size':>6} {'p50 ms':>9} {'x whole':>8}")
    for row in report["images"]:
        print(f"{'images x ' + str(row['batch']):<28} {row['size'] or 'whole':>6} {row['p50_ms']:>9.1f} "
              f"{row['speedup_vs_whole']:>8.3f}")
    for row in report["texts"]:
        label = f"{row['texts']} x {row['batch']} (w {row['width']})"
        print(f"{label:<28} {row['size'] or 'whole':>6} {row['p50_ms']:>9.1f} {row['speedup_vs_whole']:>8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
