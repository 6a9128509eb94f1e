"""The machine a benchmark ran on, for its report: CPU model, load average, library versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo (else what ``platform`` says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    """Python's version and those of the installed libraries a figure depends on (missing ones left out)."""
    names = ("ruclip-tiny", "numpy", "onnxruntime", "onnxruntime-gpu", "torch", "pillow", "tokenizers", "tensorrt")
    found = {name: _version(name) for name in names}
    return {"python": platform.python_version(), **{k: v for k, v in found.items() if v is not None}}
