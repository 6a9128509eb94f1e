"""The ``tensorrt`` backend slot: where TensorRT engines (``engines/<trt-version>_sm<cc>/*.plan``) will run.

This version finds the engines a bundle has for this GPU and says precisely what is missing; running them arrives
with the engine builder (``ruclip-tiny build-engines``). Until then ``auto`` never picks this backend, and asking
for it explains why and which backend to use instead.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

from ruclip_tiny import spec

from . import Backend, BackendError

ENGINES_DIR = "engines"
OPTIONS = ()
# Flipped by the engine runner: the slot finds engines, it does not run them.
RUNNER_AVAILABLE = False

_NOT_AVAILABLE = (
    "TensorRT backend not available: the tensorrt Python package is not installed — install ruclip-tiny[gpu] and "
    "build engines with ruclip-tiny build-engines {bundle} (or use backend='onnxruntime')"
)


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or None when ``tensorrt`` is not importable."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt
    except Exception:  # a wheel without its CUDA libraries fails at import with various errors
        return None
    return str(tensorrt.__version__)


def gpu_compute_capability(index: int = 0) -> str | None:
    """Compute capability of GPU ``index`` as ``"90"`` (sm_90), from nvidia-smi; None when there is no GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader", f"--id={index}"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else ""
    return value.replace(".", "") if value.replace(".", "").isdigit() else None


def engine_dir(bundle, trt_version: str, compute_capability: str) -> Path:
    """``BUNDLE/engines/<trt-version>_sm<cc>``: where the engines for one TensorRT version and GPU live."""
    return bundle.path(f"{ENGINES_DIR}/{trt_version}_sm{compute_capability}")


def engine_files(bundle, precision: str, trt_version: str, compute_capability: str) -> list[Path]:
    """The two plans this backend would run: ``{visual,textual}.<precision>.plan`` in ``engine_dir``."""
    directory = engine_dir(bundle, trt_version, compute_capability)
    return [directory / f"{encoder}.{precision}.plan" for encoder in spec.ENCODERS]


def unavailable_reason(bundle, precision: str) -> str | None:
    """Why TensorRT cannot serve ``bundle`` at ``precision`` on this machine, or None when it can."""
    version = tensorrt_version()
    if version is None:
        return "the tensorrt package is not installed (pip install 'ruclip-tiny[gpu]')"
    capability = gpu_compute_capability()
    if capability is None:
        return "no NVIDIA GPU found (nvidia-smi does not answer)"
    missing = [path for path in engine_files(bundle, precision, version, capability) if not path.is_file()]
    if missing:
        return (
            f"no {precision} engines for TensorRT {version} on sm_{capability} in {bundle.root} "
            f"(missing {', '.join(str(p.relative_to(bundle.root)) for p in missing)}); "
            f"build them with: ruclip-tiny build-engines {bundle.root}"
        )
    if not RUNNER_AVAILABLE:
        return "this ruclip-tiny version finds TensorRT engines but cannot run them yet"
    return None


def plan_device(options: dict) -> tuple[str, dict]:
    if options:
        raise BackendError(f"the tensorrt backend has no option {', '.join(sorted(options))}")
    return "cuda", options


def check_precision(precision: str, device: str) -> None:
    """Engines exist per precision; which ones a bundle has is checked when opening."""


def artifact_keys(precision: str) -> list[str]:
    """Engines are not manifest artifacts yet (the engine builder adds them); nothing to verify here."""
    return []


def from_bundle(bundle, precision: str = "fp16", **options) -> Backend:
    """Refuses, naming what is missing: the package, the GPU, the engines, or (for now) the runner."""
    if tensorrt_version() is None:
        raise BackendError(_NOT_AVAILABLE.format(bundle=bundle.root))
    reason = unavailable_reason(bundle, precision)
    if reason is not None:
        raise BackendError(
            f"TensorRT backend not available: {reason}. Use backend='onnxruntime' with providers=['cuda'] meanwhile"
        )
    raise BackendError("TensorRT engine runner missing in this build")  # unreachable while RUNNER_AVAILABLE is False
