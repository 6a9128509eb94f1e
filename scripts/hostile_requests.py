"""What hostile request bodies cost ``ruclip-tiny serve``: server CPU time, memory and answer per attack.

Each attack runs against a fresh server (a ``ruclip-tiny serve`` subprocess on 127.0.0.1) so that its peak memory
is its own. Per attack: the status and the first words of the answer, the client's wall time, the server's CPU time
(user + system, all threads, from /proc) and its resident memory before and after (VmRSS) and at its peak (VmHWM).

    python scripts/hostile_requests.py BUNDLE [--attacks template,pixel-bomb,parts] [--json OUT]

Attacks:
- template: ``/v1/classify`` with ``"template": "{:>20000000}"`` and 32 labels (a 5.5 KB body);
- pixel-bomb: ``/v1/embeddings/image`` with one 9400x9400 PNG (about 280 KB, under Pillow's own limit);
- parts: ``/v1/embeddings/image`` with a multipart body of 100,000 empty file parts.
Linux only (/proc); nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

ATTACKS = ("template", "pixel-bomb", "parts")
BOMB_SIDE = 9400
PARTS = 100_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pixel_bomb(cache: Path) -> bytes:
    """A 9400x9400 single-colour PNG: a few hundred KB on the wire, 265 MB of pixels once decoded."""
    if not cache.exists():
        buffer = io.BytesIO()
        Image.new("RGB", (BOMB_SIDE, BOMB_SIDE), (120, 30, 200)).save(buffer, format="PNG", optimize=True)
        cache.write_bytes(buffer.getvalue())
    return cache.read_bytes()


def many_parts(count: int) -> tuple[bytes, str]:
    boundary = "hostileboundary"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="x.jpg"\r\n\r\n\r\n'.encode()
    return part * count + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def attack_request(name: str, cache: Path) -> tuple[str, bytes, str]:
    """(path, body, content type) of one attack."""
    if name == "template":
        body = {"images": [base64.b64encode(pixel_bomb(cache)[:64]).decode()],
                "labels": [f"метка {i}" for i in range(32)], "template": "{:>20000000}"}
        return "/v1/classify", json.dumps(body).encode(), "application/json"
    if name == "pixel-bomb":
        body = {"images": [base64.b64encode(pixel_bomb(cache)).decode()]}
        return "/v1/embeddings/image", json.dumps(body).encode(), "application/json"
    if name == "parts":
        body, content_type = many_parts(PARTS)
        return "/v1/embeddings/image", body, content_type
    raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")


def run_attack(bundle: str, name: str, cache: Path) -> dict:
    path, body, content_type = attack_request(name, cache)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", "import sys; from ruclip_tiny.cli import main; sys.exit(main())", "serve", bundle,
         "--port", str(port), "--log-level", "warning", "--threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=600) as client:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not become ready: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.1)
            time.sleep(0.5)
            before, cpu_before = proc_status(server.pid), cpu_seconds(server.pid)
            started = time.perf_counter()
            try:
                response = client.post(path, content=body, headers={"content-type": content_type})
                status, answer = response.status_code, response.text[:160]
            except httpx.TransportError as err:
                status, answer = "no answer", repr(err)
            wall = time.perf_counter() - started
            after, cpu_after = proc_status(server.pid), cpu_seconds(server.pid)
        return {
            "attack": name, "body_bytes": len(body), "status": status, "answer": answer,
            "wall_s": round(wall, 3), "server_cpu_s": round(cpu_after - cpu_before, 3),
            "rss_before_mib": round(before["VmRSS"] / 1024, 1), "rss_after_mib": round(after["VmRSS"] / 1024, 1),
            "peak_growth_mib": round((after["VmHWM"] - before["VmHWM"]) / 1024, 1),
        }
    finally:
        server.terminate()
        server.wait(60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--cache", default="/tmp/ruclip-tiny-pixel-bomb.png", help="where the 9400x9400 PNG is kept")
    args = parser.parse_args(argv)
    results = [run_attack(args.bundle, name, Path(args.cache)) for name in args.attacks.split(",")]
    for result in results:
        print(f"{result['attack']:<11} {result['body_bytes']:>9} B  -> {result['status']}  wall {result['wall_s']} s, "
              f"server CPU {result['server_cpu_s']} s, RSS {result['rss_before_mib']} -> {result['rss_after_mib']} "
              f"MiB, peak +{result['peak_growth_mib']} MiB  | {result['answer'][:100]}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
