"""``ruclip-tiny serve`` as a real subprocess on a free loopback port, for the tests of the command itself."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_serve(bundle, *flags: str, env: dict | None = None, stderr=subprocess.STDOUT) -> tuple[subprocess.Popen, int]:
    """``ruclip-tiny serve BUNDLE --port P FLAGS`` (text output on ``stdout``; ``stderr`` merged into it unless
    given) and its port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ruclip_tiny.cli", "serve", str(bundle), "--port", str(port), *flags],
        stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
    )
    return process, port


def wait_for_serve(process: subprocess.Popen, port: int, timeout_s: float = 90) -> None:
    """Until /readyz answers 200; fails with the server's output if it exits or does not get there in time."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        while True:
            if process.poll() is not None:
                out, err = process.communicate()
                raise AssertionError(f"serve exited with {process.returncode}: {(out or '')[-2000:]}{err or ''}")
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"serve did not become ready in {timeout_s:.0f} s"
            time.sleep(0.1)
