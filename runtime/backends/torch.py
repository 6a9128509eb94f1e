"""The ``torch`` backend: the PyTorch reference model rebuilt from a bundle's ``reference.safetensors``.

The one backend that imports torch (with timm and transformers), and only when it is chosen: this module's top
level is torch-free, so ``runtime.backends`` can list it on a machine without torch. FP32 runs on the CPU or CUDA;
FP16 is the export's mixed-precision variant (``export.fp16.fp16_model``, the same FP32 islands as the FP16 graphs)
and runs on CUDA only.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from runtime.bundle import REFERENCE_WEIGHTS

from . import Backend, BackendError

REFERENCE_KEY = "reference"
DEVICES = ("cpu", "cuda")
OPTIONS = ("device", "threads")


def _require_torch():
    if importlib.util.find_spec("torch") is None:
        raise BackendError(
            "the torch backend needs PyTorch, which is not installed: pip install 'ruclip-tiny[export]' "
            "(or use backend='onnxruntime', which needs no torch)"
        )
    import torch

    return torch


def plan_device(options: dict) -> tuple[str, dict]:
    """(device, options) for a plan: ``device`` as given, else cuda when torch sees a GPU, else cpu."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise BackendError(f"the torch backend has no option {', '.join(unknown)}; it takes: {', '.join(OPTIONS)}")
    device = options.get("device")
    if device is None:
        device = "cuda" if _require_torch().cuda.is_available() else "cpu"
    device = str(device)
    if device.split(":")[0] not in DEVICES:
        raise BackendError(f"the torch backend runs on {' or '.join(DEVICES)} (e.g. 'cuda:1'), not {device!r}")
    return device, {**options, "device": device}


def check_precision(precision: str, device: str) -> None:
    """FP16 on the CPU is refused: PyTorch emulates half-precision convolutions there, minutes for a batch."""
    if precision == "fp16" and not device.startswith("cuda"):
        raise BackendError(
            "the torch backend does not run fp16 on the CPU: PyTorch's CPU half-precision kernels are very slow "
            "(far slower than fp32) — use precision='fp32' on the CPU, or device='cuda' for fp16"
        )


def artifact_keys(precision: str) -> list[str]:
    """The reference weights, whatever the precision (the FP16 variant is derived from them in memory)."""
    return [REFERENCE_KEY]


class TorchBackend(Backend):
    """``RuCLIPTiny`` (eval, no gradients) on ``device``; FP16 = ``export.fp16.fp16_model`` of it on CUDA."""

    name = "torch"
    max_batch = None

    def __init__(self, model, precision: str, device: str):
        self.model = model
        self.precision = precision
        self.device = device

    @classmethod
    def from_bundle(
        cls, bundle, precision: str = "fp32", device: str | None = None, threads: int | None = None
    ) -> "TorchBackend":
        """Build the reference from ``bundle``'s ``reference.safetensors``.

        device: "cpu", "cuda" or "cuda:N" (None: cuda when available); threads: ``torch.set_num_threads``
        (process-wide; None leaves torch's default).
        """
        torch = _require_torch()
        device, _ = plan_device({"device": device})
        check_precision(precision, device)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(
                f"device {device!r} asked for, but this torch {torch.__version__} sees no CUDA GPU "
                "(a CPU-only build, or no driver); use device='cpu'"
            )
        if threads is not None:
            torch.set_num_threads(threads)
        from ruclip_tiny.checkpoint import CheckpointInfo, attach_state_dict, read_state_dict
        from ruclip_tiny.errors import CheckpointError
        from ruclip_tiny.model import RuCLIPTiny

        entry = bundle.artifacts.get(REFERENCE_KEY, {"path": REFERENCE_WEIGHTS})
        path = bundle.path(entry["path"])
        checkpoint = bundle.manifest.get("checkpoint", {})
        info = CheckpointInfo(
            synthetic=bool(checkpoint.get("synthetic", False)),
            path=str(path),
            sha256=entry.get("sha256"),
            seed=checkpoint.get("seed"),
        )
        try:
            model = attach_state_dict(RuCLIPTiny(), read_state_dict(path), info)
        except CheckpointError as exc:
            raise BackendError(f"the torch backend cannot load the bundle's reference weights: {exc}") from None
        if precision == "fp16":
            from export.fp16 import fp16_model

            model = fp16_model(model)
        return cls(model.to(device), precision, device)

    def _model(self):
        if self.model is None:
            raise BackendError("this torch backend was closed; load the embedder again")
        return self.model

    def _run(self, encode, *arrays: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays]
            return encode(*tensors).float().cpu().numpy()

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self._run(self._model().encode_image, np.asarray(pixels, dtype=np.float32))

    def encode_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._run(
            self._model().encode_text, np.asarray(input_ids, dtype=np.int64), np.asarray(attention_mask, dtype=np.int64)
        )

    def describe(self) -> str:
        import torch

        return f"torch {torch.__version__} {self.precision} on {self.device}"

    def close(self) -> None:
        self.model = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def from_bundle(bundle, precision: str = "fp32", **options) -> TorchBackend:
    """The loader ``BackendPlan.open`` calls."""
    return TorchBackend.from_bundle(bundle, precision, **options)
