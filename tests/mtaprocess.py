"""Run the real ``mta serve`` as a child process with a generated configuration."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.pgcluster import free_port

REPOSITORY = Path(__file__).resolve().parent.parent


def to_toml(tables: dict[str, dict[str, Any]]) -> str:
    """Write nested tables of strings, numbers, booleans and lists as TOML."""
    lines: list[str] = []

    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, (int, float)):
            return repr(item)
        if isinstance(item, str):
            return '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(item, list):
            return "[" + ", ".join(value(element) for element in item) + "]"
        raise TypeError(f"unsupported TOML value: {item!r}")

    def table(name: str, content: dict[str, Any]) -> None:
        scalars = {k: v for k, v in content.items() if not isinstance(v, dict)}
        lines.append(f"[{name}]")
        lines.extend(f'"{key}" = {value(item)}' for key, item in scalars.items())
        lines.append("")
        for key, item in content.items():
            if isinstance(item, dict):
                table(f'{name}."{key}"' if "." in key else f"{name}.{key}", item)

    for name, content in tables.items():
        table(name, content)
    return "\n".join(lines)


def merge(base: dict, extra: dict) -> dict:
    result = dict(base)
    for key, item in extra.items():
        if isinstance(item, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], item)
        else:
            result[key] = item
    return result


class MtaProcess:
    def __init__(self, workdir: Path, database_url: str, dns_port: int, smtp_port: int,
                 extra: dict[str, dict[str, Any]] | None = None):
        self.workdir = workdir
        self.mx_port = free_port()
        self.submission_port = free_port()
        self.submissions_port = free_port()
        self.http_port = free_port()
        self.database_url = database_url
        base = {
            "server": {"hostname": "mta.example.com", "data_dir": str(workdir / "var")},
            "database": {"url": database_url},
            "smtp": {"mx": {"port": self.mx_port}, "submission": {"port": self.submission_port},
                     "submissions": {"port": self.submissions_port}},
            "domains": {"local": ["example.com"]},
            "delivery": {"nameservers": ["127.0.0.1"], "dns_port": dns_port, "smtp_port": smtp_port,
                         "source_addresses": ["127.0.0.3"], "poll_interval": 0.5},
            "http": {"port": self.http_port},
        }
        self.config_path = workdir / "mta.toml"
        self.config_path.write_text(to_toml(merge(base, extra or {})))
        self.log_path = workdir / "mta.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mta", "--config", str(self.config_path), "serve"],
            cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
        log.close()

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"mta exited with {self.process.returncode}:\n{self.log()}")
            if self._health_ok():
                return
            time.sleep(0.1)
        raise RuntimeError(f"mta did not become healthy in {timeout}s:\n{self.log()}")

    def _health_ok(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/health", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """Kill the process with SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def cli(self, *args: str, input_text: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mta", "--config", str(self.config_path), *args],
            cwd=self.workdir, input=input_text, capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPOSITORY)})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not accept connections in {timeout}s")
