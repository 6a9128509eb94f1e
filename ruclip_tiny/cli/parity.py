"""``ruclip-tiny parity``: any backend against the reference outputs stored in a bundle; prints the table and exits
0 when everything passed, 1 when something failed, 2 when nothing could be compared (not a bundle, no probe)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import RuclipTinyError


def register(commands) -> None:
    from runtime.backends import REGISTRY

    parser = commands.add_parser(
        "parity", help="compare a backend's outputs with the bundle's stored reference outputs (onnxruntime: no torch)"
    )
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument("--precision", choices=["fp32", "fp16", "all"], default="all",
                        help="which graphs to check (all: each the backend can run here)")
    parser.add_argument(
        "--backend",
        default="onnxruntime",
        choices=[*REGISTRY, "auto"],
        help="what runs the probe (default onnxruntime: the bundle's ONNX graphs)",
    )
    parser.add_argument("--providers", help="onnxruntime providers, comma-separated (cpu, cuda, tensorrt)")
    parser.add_argument("--device", help="torch backend device: cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="only report: write no report, plot or deployable flag into the bundle (for a read-only bundle)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """With ``--precision all``, a precision that the backend refuses on this machine (torch fp16 on a CPU) is
    skipped with the reason printed; asked for by name, it is a failure. ``--no-write`` only prints, so a read-only
    bundle can be checked."""
    from runtime.bundle import PRECISIONS
    from runtime.parity import BACKEND, format_table, run_parity

    backend = args.backend
    providers = [name.strip() for name in (args.providers or "").split(",") if name.strip()]
    if backend != BACKEND and providers:
        raise RuclipTinyError(f"--providers is for --backend onnxruntime, not {backend}")
    if args.device is not None and backend != "torch":
        raise RuclipTinyError("--device is for --backend torch (cpu, cuda, cuda:N)")
    report = run_parity(
        args.bundle,
        PRECISIONS if args.precision == "all" else (args.precision,),
        providers=providers or None,
        backend=backend,
        backend_options={"device": args.device} if args.device is not None else {},
        skip_unavailable=args.precision == "all",
        write=not args.no_write,
    )

    for skipped, reason in report.skipped.items():
        print(f"skipped {skipped}: {reason}")
    if not report.results:
        raise RuclipTinyError(f"the {backend} backend could run no precision here")
    where = sorted({entry.runs_on for entry in report.results.values()})
    engine = f"onnxruntime {report.onnxruntime_version}" if backend == BACKEND else f"the {backend} backend"
    print(
        f"parity of {report.bundle} against its probe reference ({report.probe.images} images, "
        f"{report.probe.texts} texts), {engine} on {', '.join(where) or 'nothing'}"
    )
    print(format_table(report))
    root = Path(report.bundle)
    written = report.written
    if written is None:
        print(f"nothing written (--no-write): {root} is unchanged, no deployable flag was set")
    else:
        print(f"report:   {root / written.report}")
        if written.plot:
            print(f"plot:     {root / written.plot}")
        else:
            print(f"plot:     skipped — {written.plot_skipped}")
        print(f"manifest: parity results and deployable flags updated in {root / written.manifest}")
    if report.failed:
        marking = "a failed artifact is marked not deployable" if written else "nothing was marked (--no-write)"
        print(f"PARITY FAILED: {', '.join(report.failed)} (reasons above); {marking}", file=sys.stderr)
        return 1
    marked = [key for key, entry in report.results.items() if entry.kind == "artifact" and ":" not in key]
    if written is None:
        print("parity passed")
    elif marked:
        print("parity passed: every requested artifact is marked deployable")
    else:
        print(f"parity passed (the {backend} backend runs no artifact of the manifest, so no deployable flag changed)")
    return 0
