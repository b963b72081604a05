"""Start a real `comms serve` subprocess on a free port for benchmarks and end-to-end tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(args: list[str], env: dict[str, str]) -> str:
    out = subprocess.run([str(BIN / "comms"), *args], env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip()


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    token: str
    tenant_id: str
    env: dict[str, str]
    data_dir: Path

    def peak_rss_mb(self) -> float:
        """The API process's peak resident set (VmHWM), in MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_server(
    data_dir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    dispatcher: bool = True,
    sender: str | None = None,
) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMMS_")}
    env.update({"COMMS_DATA_DIR": str(data_dir), "COMMS_SECRET_KEY": "bench-secret"})
    env.update(extra_env or {})
    senders = ["--sender", sender] if sender else ["--sender", "news@acme.example", "--sender", "ACME"]
    tenant_id = json.loads(cli(["tenant", "create", "--name", "Bench", "--json", *senders], env))["id"]
    token = json.loads(cli(["apikey", "create", "--tenant", tenant_id, "--json"], env))["token"]
    port = free_port()
    args = [str(BIN / "comms"), "serve", "--port", str(port)]
    if not dispatcher:
        args.append("--no-dispatcher")
    log = open(data_dir / "server.log", "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"comms serve exited: {(data_dir / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return Server(process, url, token, tenant_id, env, data_dir)
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("comms serve did not become ready")
