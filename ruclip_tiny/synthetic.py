"""A deterministic stand-in for the published weights: the exact architecture with trained-like scales.

At timm's initialisation the ConvNeXt layer scales are 1e-6, so every block adds nothing and a wrong norm, a
swapped transpose or a broken export all hide. These weights instead look like a trained network's: layer scales
0.1-1, norm weights near 1, fan-in-scaled matrices, so every layer moves the features and every bug shows.
The values come from numpy's PCG64 seeded per tensor name, so they do not depend on torch's RNG or on key order.
"""

from __future__ import annotations

import zlib

import numpy as np

from . import spec

SYNTHETIC_MARKER = "synthetic"


def _tensor_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _synthetic_value(name: str, shape: tuple[int, ...], role: str, rng: np.random.Generator) -> np.ndarray:
    if role == "norm_weight":
        return 1.0 + 0.1 * rng.standard_normal(shape)
    if role == "norm_bias":
        return 0.05 * rng.standard_normal(shape)
    if role == "layer_scale":
        return rng.uniform(0.1, 1.0, shape)
    if role == "embedding":
        return (0.02 if "position" in name else 0.05) * rng.standard_normal(shape)
    if role == "logit_scale":
        return np.full(shape, spec.LOGIT_SCALE_INIT)
    if name.endswith("bias"):
        return 0.02 * rng.standard_normal(shape)
    fan_in = int(np.prod(shape[1:]))  # Linear [out, in], Conv2d [out, in/groups, kh, kw]
    return rng.standard_normal(shape) / np.sqrt(fan_in)


def _roles(model) -> dict[str, str]:
    """Parameter name -> role, read from the module types rather than guessed from names."""
    from torch import nn

    roles = {"logit_scale": "logit_scale"}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, nn.LayerNorm):
            roles[prefix + "weight"] = "norm_weight"
            roles[prefix + "bias"] = "norm_bias"
        elif isinstance(module, nn.Embedding):
            roles[prefix + "weight"] = "embedding"
        for param_name, _ in module.named_parameters(recurse=False):
            if param_name == "gamma":
                roles[prefix + param_name] = "layer_scale"
    return roles


def _synthetic_state(template, seed: int) -> dict:
    import torch

    roles = _roles(template)
    state = {}
    for name, tensor in template.state_dict().items():
        value = _synthetic_value(name, tuple(tensor.shape), roles.get(name, "weight"), _tensor_rng(seed, name))
        state[name] = torch.from_numpy(np.array(value, dtype=np.float32, order="C"))
    return state


def synthetic_checkpoint(seed: int = 0) -> dict:
    """A deterministic state dict ``{name: float32 tensor}`` of the exact RuCLIP tiny architecture."""
    from .model import RuCLIPTiny

    return _synthetic_state(RuCLIPTiny(), seed)


def synthetic_model(seed: int = 0):
    """``RuCLIPTiny`` with ``synthetic_checkpoint(seed)`` weights: eval, float32, CPU, labelled synthetic."""
    from .checkpoint import CheckpointInfo, attach_state_dict
    from .model import RuCLIPTiny

    model = RuCLIPTiny()
    return attach_state_dict(model, _synthetic_state(model, seed), CheckpointInfo(synthetic=True, seed=seed))


def load_model(checkpoint: str | None = None, seed: int = 0):
    """The published model from ``checkpoint`` or, when it is None, the synthetic default with ``seed``."""
    if checkpoint:
        from .checkpoint import load_checkpoint

        return load_checkpoint(checkpoint)
    return synthetic_model(seed=seed)
