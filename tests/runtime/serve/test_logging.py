"""``ruclip-tiny serve`` logs the server's own lines (ready, failed to load, a client hanging up, timeouts) through
uvicorn's logging: uvicorn's format on stderr, filtered by ``--log-level``, like uvicorn's own lines.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx", reason="the server tests need httpx (pip install -e '.[dev]')")
pytest.importorskip("fastapi", reason="the server tests need the serve extra (pip install -e '.[serve]')")

from tests.runtime.fake_bundle import build_fake_bundle  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("logging") / "fake-bundle")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(bundle: Path, port: int, log_level: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from ruclip_tiny.cli import main; sys.exit(main())", "serve",
         str(bundle), "--port", str(port), "--backend", "onnxruntime", "--threads", "1", "--log-level", log_level],
        env={**os.environ, "RUCLIP_TINY_API_KEY": ""}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_ready(client: httpx.Client, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.1)


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
    port = free_port()
    process = serve(bundle, port, log_level)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_ready(client, process)
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
