"""``ruclip-tiny triton-repo``: a Triton Inference Server model repository from a bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import non_negative_int, positive_int


def register(commands) -> None:
    parser = commands.add_parser("triton-repo", help="write a Triton Inference Server model repository from a bundle")
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument("--out", required=True, help="repository directory to create")
    parser.add_argument("--platform", default="onnxruntime", choices=["onnxruntime", "tensorrt", "python"],
                        help="what runs the encoders in Triton (tensorrt: the bundle's engines; python: the ONNX "
                             "graphs in onnxruntime inside the python backend, for a Triton without the onnxruntime "
                             "backend)")
    parser.add_argument("--python-path", action="append", default=[], metavar="DIR",
                        help="directory the python models put first on sys.path (repeatable; e.g. one built by "
                             "scripts/triton_python_deps.sh). Default: none (the packages installed in Triton)")
    parser.add_argument("--precision", default=None, choices=["fp32", "fp16"],
                        help="graphs/engines to use (default: fp32 for onnxruntime and python, fp16 for tensorrt)")
    parser.add_argument("--max-batch", type=positive_int, default=64, help="max_batch_size of both models (default 64)")
    parser.add_argument("--max-queue-delay-us", type=non_negative_int, default=1000,
                        help="dynamic batching: longest a request waits for a batch, in microseconds (default 1000)")
    parser.add_argument("--instances", type=positive_int, default=1, help="model instances per device (default 1)")
    parser.add_argument("--instance-kind", default=None, choices=["auto", "gpu", "cpu"],
                        help="where instances run (default: auto for onnxruntime, gpu for tensorrt, cpu for python)")
    parser.add_argument("--trt-version", default=None,
                        help="TensorRT version of the engines to use when the bundle has several")
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty --out")
    parser.add_argument("--allow-not-deployable", action="store_true",
                        help="include artifacts whose parity check has not passed")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from export.triton import write_triton_repository

    models = write_triton_repository(
        args.bundle, args.out, platform=args.platform, precision=args.precision, max_batch=args.max_batch,
        max_queue_delay_us=args.max_queue_delay_us, instance_count=args.instances, instance_kind=args.instance_kind,
        trt_version=args.trt_version, force=args.force, allow_not_deployable=args.allow_not_deployable,
        python_path=args.python_path,
    )
    print(f"wrote Triton model repository {args.out} ({args.platform}):")
    for model in models:
        files = [*model.files, *(["model.py"] if model.code is not None else [])]
        print(f"  {model.name}: {', '.join(files) or 'ensemble'}")
    if args.platform == "python":
        print(f"start it on this machine with: scripts/triton_local.sh {args.out}  (see {args.out}/README.md)")
    else:
        print(f"start it with: tritonserver --model-repository={Path(args.out).resolve()}  (see {args.out}/README.md)")
    if models and models[0].synthetic:
        print("SYNTHETIC weights: the models prove the toolchain, their embeddings mean nothing")
    return 0
