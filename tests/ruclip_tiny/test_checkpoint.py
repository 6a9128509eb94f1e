"""Checkpoint loading: every accepted format loads strictly and safely; every wrong file gets a precise error."""

from __future__ import annotations

import os
import pickle
import re

import pytest
import torch

from ruclip_tiny.checkpoint import load_checkpoint, read_state_dict
from ruclip_tiny.errors import CheckpointError
from ruclip_tiny.fileio import file_sha256


def _assert_same_weights(model, state):
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name


def test_torch_zip_checkpoint_loads_strictly_in_eval_float32(tmp_path, synthetic_state):
    path = tmp_path / "ru-clip-tiny.pkl"
    torch.save(synthetic_state, path)
    model = load_checkpoint(path)
    _assert_same_weights(model, synthetic_state)
    assert not model.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert model.checkpoint_info.sha256 == file_sha256(path) and not model.checkpoint_info.synthetic


def test_original_quirks_are_accepted(tmp_path, synthetic_state):
    """Legacy pickle format, DataParallel prefixes, the position_ids buffer and a {"state_dict": ...} wrapper."""
    state = {f"module.{k}": v for k, v in synthetic_state.items()}
    state["module.transformer.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    path = tmp_path / "legacy.pkl"
    torch.save({"state_dict": state, "epoch": 3}, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:2] == b"\x80\x02"  # really the pre-zip format
    read = read_state_dict(path)
    assert set(read) == set(synthetic_state)
    _assert_same_weights(load_checkpoint(path), synthetic_state)


def test_safetensors_and_half_precision_checkpoints_load_as_float32(tmp_path, synthetic_state):
    from safetensors.torch import save_file

    path = tmp_path / "ruclip.safetensors"
    save_file({k: v.half() for k, v in synthetic_state.items()}, path)
    state = read_state_dict(path)
    assert all(t.dtype == torch.float32 for t in state.values())
    assert torch.equal(state["final_ln.weight"], synthetic_state["final_ln.weight"].half().float())


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickle_that_would_run_code_is_refused_and_never_executed(tmp_path, zip_format):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pkl"
    torch.save({"visual.stem.0.weight": _RunsCode(marker)}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError, match=r"refusing to execute code") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "mkdir" in str(info.value)
    assert not marker.exists()


def _truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep])


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda p: None, r"does not exist"),
        (lambda p: p.mkdir(), r"is not a file"),
        (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        (lambda p: p.write_text("hello, I am a text file\n" * 20), r"not a PyTorch or safetensors checkpoint"),
        (lambda p: p.write_bytes(bytes(range(256)) * 4), r"not a PyTorch or safetensors checkpoint"),
        (lambda p: p.write_bytes(pickle.dumps({"a": 1}, protocol=4)), r"plain Python pickle"),
        (lambda p: torch.save([torch.zeros(2)], p), r"holds a list, not a state dict"),
        (lambda p: torch.save({"a": torch.zeros(2), "b": 3, "c": "x"}, p), r"2 entries are not tensors: b, c"),
    ],
    ids=["missing", "directory", "empty", "text", "random-bytes", "plain-pickle", "list", "non-tensors"],
)
def test_files_that_are_not_checkpoints_get_a_precise_error(tmp_path, make, pattern):
    path = tmp_path / "ckpt.pkl"
    make(path)
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_truncated_checkpoint_is_reported_as_truncated(tmp_path, fmt):
    path = tmp_path / f"cut.{'safetensors' if fmt == 'safetensors' else 'pkl'}"
    state = {"final_ln.weight": torch.randn(768, 264), "final_ln.bias": torch.randn(768)}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, path)
    else:
        torch.save(state, path, _use_new_zipfile_serialization=fmt == "zip")
    _truncate(path, path.stat().st_size // 2)
    with pytest.raises(CheckpointError, match=r"truncated") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_key_mismatches_are_listed_with_counts(tmp_path, synthetic_state):
    state = dict(synthetic_state)
    for name in [k for k in state if k.startswith("transformer.transformer.layer.2.")]:
        del state[name]  # 16 missing
    state["visual.head.fc.weight"] = torch.zeros(1000, 768)
    state["extra.bias"] = torch.zeros(3)
    state["final_ln.weight"] = torch.zeros(512, 264)
    path = tmp_path / "other-model.pkl"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert re.search(r"16 missing keys: transformer\.transformer\.layer\.2\.\S+(, \S+){4} and 11 more", message)
    assert "2 unexpected keys: extra.bias, visual.head.fc.weight" in message
    assert "1 wrong shapes: final_ln.weight (512, 264) (expected (768, 264))" in message


@pytest.mark.parametrize("fmt", ["zip", "safetensors"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_weights_are_refused_naming_the_first_bad_tensor_and_the_file(tmp_path, synthetic_state, fmt, bad):
    state = dict(synthetic_state)
    first, second = "visual.stem.0.weight", "final_ln.weight"
    for name, count in ((first, 2), (second, 1)):
        state[name] = state[name].clone()
        state[name].view(-1)[:count] = bad
    path = tmp_path / f"diverged.{'safetensors' if fmt == 'safetensors' else 'pkl'}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, path)
    else:
        torch.save(state, path)
    order = list(synthetic_state)  # the model's order; a safetensors file keeps its keys sorted
    assert order.index(first) < order.index(second)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    nan, inf = (2, 0) if bad != bad else (0, 2)
    assert message.startswith(f"checkpoint {path}: tensor {first} (96, 3, 4, 4) holds {nan} NaN and {inf} Inf values")
    assert f"1 other tensors hold NaN/Inf too: {second}" in message and "use another checkpoint" in message
