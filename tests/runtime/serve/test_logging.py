"""``ruclip-tiny serve`` logs the server's own lines (ready, failed to load, a client hanging up, timeouts) through
uvicorn's logging: uvicorn's format on stderr, filtered by ``--log-level``, like uvicorn's own lines.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx", reason="the server tests need httpx (pip install -e '.[dev]')")
pytest.importorskip("fastapi", reason="the server tests need the serve extra (pip install -e '.[serve]')")

from tests.runtime.fake_bundle import build_fake_bundle  # noqa: E402
from tests.runtime.serve.serve_command import start_serve, wait_for_serve  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("logging") / "fake-bundle")


def serve(bundle: Path, log_level: str) -> tuple[subprocess.Popen, int]:
    return start_serve(bundle, "--backend", "onnxruntime", "--threads", "1", "--log-level", log_level,
                       env={**os.environ, "RUCLIP_TINY_API_KEY": ""}, stderr=subprocess.PIPE)


def hang_up(port: int) -> None:
    """A client that sends half a body and leaves (the server logs one warning for it)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/embeddings/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b'{"texts": ["' + b"A" * 500)
        time.sleep(0.2)


def stop(process: subprocess.Popen) -> str:
    process.terminate()
    try:
        return process.communicate(timeout=60)[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.parametrize("log_level", ["info", "warning"])
def test_the_servers_lines_go_through_uvicorns_logging_at_its_log_level(bundle, log_level):
    process, port = serve(bundle, log_level)
    try:
        wait_for_serve(process, port, timeout_s=60)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            hang_up(port)
            deadline = time.monotonic() + 10
            while 'status="499"' not in client.get("/metrics").text:
                assert time.monotonic() < deadline, "the hang-up was not counted as 499"
                time.sleep(0.05)
    finally:
        err = stop(process)
    # uvicorn's format ("LEVEL:" padded), not Python's last-resort handler (the bare message, warnings only)
    warnings = [line for line in err.splitlines() if "closed the connection before the answer" in line]
    assert warnings == ["WARNING:  POST /v1/embeddings/text: the client closed the connection before the answer "
                        "(counted as status 499)"], err
    ready = [line for line in err.splitlines() if "ready: " in line]
    if log_level == "info":
        assert len(ready) == 1 and ready[0].startswith("INFO:     ready: ") and "onnxruntime" in ready[0], err
        assert "INFO:     Application startup complete." in err  # uvicorn's own line, same handler
    else:
        assert ready == [] and "INFO:" not in err, err
