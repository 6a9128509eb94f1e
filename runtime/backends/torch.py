"""The ``torch`` backend: the PyTorch reference model rebuilt from a bundle's ``reference.safetensors``.

The one backend that imports torch (with timm and transformers), and only when it is chosen: this module's top
level is torch-free, so ``runtime.backends`` can list it on a machine without torch. FP32 runs on the CPU or CUDA;
FP16 is the model's mixed-precision form (``ruclip_tiny.fp16.fp16_model``, the same FP32 islands as the FP16 graphs)
and runs on CUDA only: on a GPU without TensorRT it is a legitimate engine, held to the same fp16 parity bars.

On CUDA two options speed the fixed model up: ``cuda_graphs=True`` records one CUDA graph per input shape (batch,
and sequence length for text) and replays it — a call becomes one launch instead of hundreds of kernel launches,
which is what small batches are bound by — and ``compile="default"|"reduce-overhead"|"max-autotune"`` runs the
encoders through ``torch.compile`` (its first call per shape compiles, for tens of seconds). FP32 on CUDA runs
without TF32 (process-wide: cuDNN turns it on for convolutions by default), so FP32 stays FP32.
"""

from __future__ import annotations

import importlib.util
import threading
from collections import OrderedDict

import numpy as np

from runtime.manifest import REFERENCE_KEY

from . import Backend, BackendError

DEVICES = ("cpu", "cuda")
OPTIONS = ("device", "threads", "cuda_graphs", "compile")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
# Each recorded graph keeps its own input/output buffers; shapes beyond this many evict the least recently used.
MAX_CUDA_GRAPHS = 32


def _require_torch():
    if importlib.util.find_spec("torch") is None:
        raise BackendError(
            "the torch backend needs PyTorch, which is not installed: pip install '.[export]' in a checkout of "
            "ruclip-tiny (or use backend='onnxruntime', which needs no torch)"
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
    check_speedups(device, bool(options.get("cuda_graphs")), options.get("compile"))
    return device, {**options, "device": device}


def check_precision(precision: str, device: str) -> None:
    """FP16 on the CPU is refused: PyTorch emulates half-precision convolutions there, minutes for a batch."""
    if precision == "fp16" and not device.startswith("cuda"):
        raise BackendError(
            "the torch backend does not run fp16 on the CPU: PyTorch's CPU half-precision kernels are very slow "
            "(far slower than fp32) — use precision='fp32' on the CPU, or device='cuda' for fp16"
        )


def plan_artifacts(bundle, precision: str, options: dict, allow_not_deployable: bool) -> tuple[list[str], dict]:
    """The reference weights, whatever the precision (the FP16 variant is derived from them in memory); they have no
    parity verdict of their own, so no deployability gate applies."""
    return [REFERENCE_KEY], options


def check_speedups(device: str, cuda_graphs: bool, compile_mode: str | None) -> None:
    """CUDA graphs need CUDA; ``compile`` must be a known mode; the two do not stack (use compile's own graphs)."""
    if cuda_graphs and not device.startswith("cuda"):
        raise BackendError(f"cuda_graphs=True needs device='cuda', not {device!r} (CUDA graphs record GPU work)")
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        raise BackendError(
            f"compile={compile_mode!r} is not a torch.compile mode; choose one of {', '.join(COMPILE_MODES)}"
        )
    if cuda_graphs and compile_mode is not None:
        raise BackendError(
            "cuda_graphs=True and compile=... do not stack; for compiled code replayed as CUDA graphs use "
            "compile='reduce-overhead'"
        )


def disable_tf32(torch) -> None:
    """FP32 matmuls and convolutions in full FP32 on CUDA (TF32 has a 10-bit mantissa and moves FP32 results)."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9; mixing it with allow_tf32 is an error
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


class CudaGraphEncoder:
    """An encoder replayed from CUDA graphs, one per input shape, recorded on first use.

    ``__call__(*tensors)`` (CUDA tensors, the encoder's inputs) -> a new tensor with the encoder's output. The
    inputs are copied into the graph's static buffers and the output copied out, so callers never share memory
    with the graph; a lock serialises replays (the static buffers are one per shape).
    """

    def __init__(self, encode, max_graphs: int = MAX_CUDA_GRAPHS, warmup: int = 2):
        import torch

        self.torch = torch
        self.encode = encode
        self.max_graphs = max_graphs
        self.warmup = warmup
        self.pool = torch.cuda.graph_pool_handle()  # graphs share one memory pool: shapes differ, memory is reused
        self.graphs: OrderedDict[tuple, tuple] = OrderedDict()
        self.lock = threading.Lock()

    def _record(self, tensors) -> tuple:
        torch = self.torch
        static_inputs = [tensor.clone() for tensor in tensors]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as recording requires
            for _ in range(self.warmup):
                self.encode(*static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_output = self.encode(*static_inputs)
        return graph, static_inputs, static_output

    def __call__(self, *tensors):
        key = tuple((tuple(t.shape), t.dtype) for t in tensors)
        with self.lock:
            if key not in self.graphs:
                if len(self.graphs) >= self.max_graphs:
                    self.graphs.popitem(last=False)
                self.graphs[key] = self._record(tensors)
            self.graphs.move_to_end(key)
            graph, static_inputs, static_output = self.graphs[key]
            for static, tensor in zip(static_inputs, tensors, strict=True):
                static.copy_(tensor)
            graph.replay()
            return static_output.clone()


class TorchBackend(Backend):
    """``RuCLIPTiny`` (eval, no gradients) on ``device``; FP16 = ``ruclip_tiny.fp16.fp16_model`` of it on CUDA."""

    name = "torch"
    max_batch = None

    def __init__(self, model, precision: str, device: str, cuda_graphs: bool = False, compile_mode: str | None = None):
        self.model = model
        self.precision = precision
        self.device = device
        self.cuda_graphs = cuda_graphs
        self.compile_mode = compile_mode
        self.encoders = self._encoders(model)

    def _encoders(self, model) -> dict:
        """{"visual": encode_image, "textual": encode_text}, each as this backend runs it (eager, graphs, compiled):
        callables on device tensors, also what a benchmark times without the host copies."""
        encoders = {"visual": model.encode_image, "textual": model.encode_text}
        if self.compile_mode is not None:
            import torch

            encoders = {name: torch.compile(fn, mode=self.compile_mode) for name, fn in encoders.items()}
        elif self.cuda_graphs:
            encoders = {name: CudaGraphEncoder(fn) for name, fn in encoders.items()}
        return encoders

    @classmethod
    def from_bundle(
        cls,
        bundle,
        precision: str = "fp32",
        device: str | None = None,
        threads: int | None = None,
        cuda_graphs: bool = False,
        compile: str | None = None,
    ) -> TorchBackend:
        """Build the reference from ``bundle``'s ``reference.safetensors``.

        device: "cpu", "cuda" or "cuda:N" (None: cuda when available); threads: ``torch.set_num_threads``
        (process-wide; None leaves torch's default); cuda_graphs: replay recorded CUDA graphs (CUDA only);
        compile: a ``torch.compile`` mode ("default", "reduce-overhead", "max-autotune"), None for eager.
        """
        torch = _require_torch()
        device, _ = plan_device({"device": device})
        check_precision(precision, device)
        check_speedups(device, cuda_graphs, compile)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(
                f"device {device!r} asked for, but this torch {torch.__version__} sees no CUDA GPU "
                "(a CPU-only build, or no driver); use device='cpu'"
            )
        if threads is not None:
            torch.set_num_threads(threads)
        if device.startswith("cuda"):
            disable_tf32(torch)
        from ruclip_tiny.checkpoint import CheckpointInfo, attach_state_dict, read_state_dict
        from ruclip_tiny.errors import CheckpointError
        from ruclip_tiny.model import RuCLIPTiny

        entry = bundle.artifact(REFERENCE_KEY)
        path = bundle.path(entry.path)
        checkpoint = bundle.manifest.checkpoint
        info = CheckpointInfo(
            synthetic=bundle.synthetic,
            path=str(path),
            sha256=entry.sha256,
            seed=checkpoint.seed if checkpoint is not None else None,
        )
        try:
            model = attach_state_dict(RuCLIPTiny(), read_state_dict(path), info)
        except CheckpointError as exc:
            raise BackendError(f"the torch backend cannot load the bundle's reference weights: {exc}") from None
        if precision == "fp16":
            from ruclip_tiny.fp16 import fp16_model

            model = fp16_model(model)
        return cls(model.to(device), precision, device, cuda_graphs, compile)

    def _model(self):
        if self.model is None:
            raise BackendError("this torch backend was closed; load the embedder again")
        return self.model

    def _run(self, encoder: str, *arrays: np.ndarray) -> np.ndarray:
        import torch

        self._model()
        with torch.inference_mode():
            tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays]
            return self.encoders[encoder](*tensors).float().cpu().numpy()

    def _encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self._run("visual", pixels)

    def _encode_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._run("textual", input_ids, attention_mask)

    def describe(self) -> str:
        import torch

        how = f" compiled ({self.compile_mode})" if self.compile_mode else ""
        how = " with CUDA graphs" if self.cuda_graphs else how
        return f"torch {torch.__version__} {self.precision} on {self.device}{how}"

    def close(self) -> None:
        self.model = None
        self.encoders = {}
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def from_bundle(bundle, precision: str = "fp32", **options) -> TorchBackend:
    """The loader ``BackendPlan.open`` calls."""
    return TorchBackend.from_bundle(bundle, precision, **options)
