"""The test session never reaches the Hugging Face hub: conftest sets HF_HUB_OFFLINE=1 before anything imports
huggingface_hub, so a tokenizer given as a hub id is never downloaded by a test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest


def test_the_session_runs_with_hf_hub_offline():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE is True  # what huggingface_hub read when it was imported
    child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('HF_HUB_OFFLINE'))"],
                           capture_output=True, text=True, timeout=60)
    assert child.stdout.strip() == "1"  # the CLI subprocesses of the tests inherit it


def test_a_hub_id_is_refused_without_a_connection_even_when_the_hub_answers(monkeypatch, tmp_path):
    from ruclip_tiny.errors import TokenizerError
    from ruclip_tiny.tokenizer import load_tokenizer

    with socket.socket() as hub:  # a "hub" on loopback that would accept a download's connection
        hub.bind(("127.0.0.1", 0))
        hub.listen()
        hub.setblocking(False)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.getsockname()[1]}")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        with pytest.raises(TokenizerError, match="not in the local Hugging Face cache"):
            load_tokenizer("ruclip-tiny-tests/not-cached-anywhere")
        with pytest.raises(BlockingIOError):
            hub.accept()  # nobody connected
