"""Loading the published checkpoint (``ru-clip-tiny.pkl``) or a safetensors copy into ``RuCLIPTiny``, safely.

Reading never executes code from the file (``torch.load(weights_only=True)``), and every way a file can be wrong
ends in one ``CheckpointError`` that names the file and says what to do, never a traceback from inside torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError
from .fileio import file_sha256

# torch's legacy (pre-1.6) format starts with a pickled magic number; the zip format is a zip archive.
_LEGACY_TORCH_PREFIX = bytes.fromhex("80028a0a6cfc9c46f9206aa85019")
_ZIP_PREFIX = b"PK\x03\x04"
# Keys the original file may carry that are not parameters of the model.
_IGNORED_KEYS = ("transformer.embeddings.position_ids",)
# Wrappers that training scripts put around a state dict.
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")
_LISTED = 5  # how many names an error message lists before it only counts


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a model's weights came from: a file (with its sha256) or the synthetic generator."""

    synthetic: bool
    path: str | None = None
    sha256: str | None = None
    seed: int | None = None

    @property
    def label(self) -> str:
        return f"synthetic (seed {self.seed})" if self.synthetic else f"{self.path} (sha256 {self.sha256[:12]}…)"


def _format_names(kind: str, names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return f"{len(names)} {kind}: {shown}{more}"


def _sniff(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(16)
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); the download or copy did not finish")
    if head.startswith(_ZIP_PREFIX):
        return "torch-zip"
    if head.startswith(_LEGACY_TORCH_PREFIX):
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":
        raise CheckpointError(
            f"checkpoint {path} is a plain Python pickle, not a file written by torch.save; "
            "load it in the program that wrote it and save its state dict with torch.save or safetensors"
        )
    raise CheckpointError(
        f"checkpoint {path} is not a PyTorch or safetensors checkpoint (it starts with {head[:8]!r}); "
        "pass ru-clip-tiny.pkl or a .safetensors file"
    )


def _read_torch(path: Path) -> object:
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(
                f"checkpoint {path} refers to {found.group(1)}, which loading would have to import and run; "
                "refusing to execute code from a checkpoint. A checkpoint must hold only tensors: load it once in "
                "a trusted environment and save model.state_dict() with torch.save or safetensors"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its pickle cannot be read ({exc.__class__.__name__})"
        ) from None
    except (EOFError, RuntimeError) as exc:
        if isinstance(exc, EOFError) or "central directory" in str(exc) or "zip archive" in str(exc):
            raise CheckpointError(
                f"checkpoint {path} is truncated or corrupt ({path.stat().st_size} bytes); download or copy it again"
            ) from None
        raise CheckpointError(f"checkpoint {path} could not be read: {str(exc).splitlines()[0]}") from None


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is not a valid safetensors file ({str(exc).splitlines()[0]}); "
            "it may be truncated: download or copy it again"
        ) from None


def read_state_dict(path: str | Path) -> dict:
    """Read a checkpoint file into a flat ``{name: float32 tensor}`` dict with the published key names.

    Accepts torch's zip and legacy formats and safetensors; strips a leading ``module.`` (DataParallel) and
    unwraps ``{"state_dict": ...}``; drops ``transformer.embeddings.position_ids``. Does not check the keys.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of ru-clip-tiny.pkl")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file; pass the path of ru-clip-tiny.pkl itself")
    kind = _sniff(path)
    state = _read_safetensors(path) if kind == "safetensors" else _read_torch(path)

    for key in _NESTED_STATE_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(state).__name__}, not a state dict (a mapping of names to tensors); "
            "save model.state_dict()"
        )
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise CheckpointError(
            f"checkpoint {path} is not a plain state dict: {_format_names('entries are not tensors', not_tensors)}"
        )
    cleaned = {}
    for key, tensor in state.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        if key in _IGNORED_KEYS:
            continue
        cleaned[key] = tensor.float() if tensor.is_floating_point() else tensor
    return cleaned


def check_state_dict(state: Mapping, expected: Mapping, source: str) -> None:
    """Raise one CheckpointError listing missing, unexpected and wrong-shape keys of ``state`` vs ``expected``."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = [
        _format_names(kind, names)
        for kind, names in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
        if names
    ]
    if problems:
        raise CheckpointError(
            f"checkpoint {source} does not fit RuCLIP tiny ({len(expected)} tensors expected): "
            + "; ".join(problems)
            + ". Is it the ru-clip-tiny.pkl checkpoint?"
        )


def check_finite(state: Mapping, source: str) -> None:
    """Raise CheckpointError naming the first tensor (in ``state``'s order) that holds NaN or Inf."""
    import torch

    bad = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if not bad:
        return
    first = state[bad[0]]
    nan, inf = int(torch.isnan(first).sum()), int(torch.isinf(first).sum())
    others = f"; {_format_names('other tensors hold NaN/Inf too', bad[1:])}" if len(bad) > 1 else ""
    raise CheckpointError(
        f"checkpoint {source}: tensor {bad[0]} {tuple(first.shape)} holds {nan} NaN and {inf} Inf values{others}. "
        "They turn every output they reach into NaN (a diverged training run or a corrupt copy): use another "
        "checkpoint"
    )


def attach_state_dict(model, state: Mapping, info: CheckpointInfo):
    """Load ``state`` strictly into ``model``; eval mode, float32, no gradients. ``model.checkpoint_info`` = info.
    Refuses (CheckpointError) a state that does not fit the model or holds NaN/Inf."""
    expected = model.state_dict()
    check_state_dict(state, expected, info.path or "synthetic")
    # The model's order (image encoder first), not the file's: safetensors files keep their keys sorted.
    check_finite({name: state[name] for name in expected}, info.path or "synthetic")
    model.load_state_dict(state, strict=True)
    model.checkpoint_info = info
    return model.float().eval().requires_grad_(False)


def load_checkpoint(path: str | Path):
    """The published model from ``path`` (``ru-clip-tiny.pkl`` or a .safetensors copy): eval, float32, CPU."""
    from .model import RuCLIPTiny

    state = read_state_dict(path)
    info = CheckpointInfo(synthetic=False, path=str(path), sha256=file_sha256(path))
    return attach_state_dict(RuCLIPTiny(), state, info)
