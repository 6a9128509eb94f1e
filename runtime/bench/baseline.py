"""The bench's baseline, the original pipeline: RuCLIPTiny in torch eager FP32 from the bundle's weights, texts
padded to 77 tokens, images decoded and preprocessed one after another with PIL. The one bench module that imports
torch, and only when a baseline is measured."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from runtime.bundle import REFERENCE_WEIGHTS, Bundle


def cuda_synchronizer(device: str) -> Callable[[], None] | None:
    """What to call before reading the clock after a call on ``device``: waits for queued CUDA work (None on the
    CPU, or where torch cannot see CUDA)."""
    import importlib.util

    if device.startswith("cuda") and importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.synchronize
    return None


class TorchBaseline:
    """The original pipeline, loaded from ``bundle``; ``threads``: torch's intra-op threads."""

    def __init__(self, bundle: Bundle, tokenizer, threads: int):
        import torch

        from ruclip_tiny.checkpoint import load_checkpoint

        torch.set_num_threads(threads)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_checkpoint(bundle.path(REFERENCE_WEIGHTS)).to(self.device)
        self.tokenizer = tokenizer

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model.encode_image(self.torch.from_numpy(pixels).to(self.device)).cpu().numpy()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        encoded = self.tokenizer.encode(texts)  # always [B, 77]: the original padded to max_length
        with self.torch.inference_mode():
            ids = self.torch.from_numpy(encoded.input_ids).to(self.device)
            mask = self.torch.from_numpy(encoded.attention_mask).to(self.device)
            return self.model.encode_text(ids, mask).cpu().numpy()

    def encode_files(self, paths: list[Path], batch_size: int) -> np.ndarray:
        from ruclip_tiny.transform import image_transform, load_image

        transform = image_transform()
        rows = []
        for start in range(0, len(paths), batch_size):
            pixels = np.stack([transform(load_image(p)) for p in paths[start : start + batch_size]])
            rows.append(self.encode_pixels(pixels))
        return np.concatenate(rows)
