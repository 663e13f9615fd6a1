"""The MTA under the delivery benchmark: ``mta serve`` on a database that the benchmark owns.

It gets static routes from each site's domain to a loopback sink, a
nameserver on loopback, and the connection reuse setting under test. Its
listeners take no mail during the run: only its delivery side works.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from loadtest.baseline import (FAILURE_LEVELS, PROBLEM_LINE, descendants, kill_leftovers, stop_process,
                               tree_cpu_seconds)
from loadtest.delivery_queue import SENDER_DOMAIN
from loadtest.target import free_port
from mta import config as mta_config
from mta.config import DeliveryConfig

LOOPBACK = "127.0.0.1"
REPOSITORY = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Reuse:
    """The ``[delivery]`` settings that turn connection reuse on or off."""

    name: str
    cache_seconds: float
    reuse_limit: int


# The defaults of DeliveryConfig. ConnectionCache.put closes every
# connection after its message when connection_cache_seconds is 0.
REUSE_ON = Reuse("on", DeliveryConfig.connection_cache_seconds, DeliveryConfig.connection_reuse_limit)
REUSE_OFF = Reuse("off", 0.0, DeliveryConfig.connection_reuse_limit)


class MtaError(RuntimeError):
    """The MTA failed to start, or stopped during the run."""


class DeliveryMta:
    def __init__(self, directory: Path, database_url: str, routes: dict[str, str], reuse: Reuse,
                 tree: Path = REPOSITORY, extra_config: str = ""):
        # The checkout whose mta runs: this one, or an older one to compare with.
        self.tree = tree
        self.directory = directory
        self.database_url = database_url
        self.routes = routes
        self.reuse = reuse
        # TOML tables appended to the configuration, such as [delivery.lmtp].
        self.extra_config = extra_config
        self.http_port = free_port()
        self.config_path = directory / "mta.toml"
        self.log_path = directory / "mta.log"
        self.process: subprocess.Popen | None = None

    def write_config(self) -> mta_config.Config:
        """Write the MTA's configuration and return it as the MTA will load it."""
        routes = "\n".join(f"{json.dumps(domain)} = {json.dumps(target)}" for domain, target in self.routes.items())
        # Every listener gets a free loopback port, so no default port is taken.
        listeners = "".join(f'[smtp.{name}]\naddress = "{LOOPBACK}"\nport = {free_port()}\n\n'
                            for name in ("mx", "submission", "submissions"))
        self.config_path.write_text(
            f'[server]\ndata_dir = "{self.directory / "var"}"\nhostname = "mta.bench.invalid"\nworkers = 1\n\n'
            f"[database]\nurl = {json.dumps(self.database_url)}\n\n"
            f"{listeners}"
            f'[http]\naddress = "{LOOPBACK}"\nport = {self.http_port}\n\n'
            f'[domains]\nlocal = ["{SENDER_DOMAIN}"]\n\n'
            f'[delivery]\nnameservers = ["{LOOPBACK}"]\n'
            f"connection_cache_seconds = {self.reuse.cache_seconds}\n"
            f"connection_reuse_limit = {self.reuse.reuse_limit}\n\n"
            f"[delivery.routes]\n{routes}\n\n{self.extra_config}")
        return mta_config.load(self.config_path)

    def start(self) -> None:
        # PYTHONPATH comes before the editable install's finder, so this checkout's mta runs.
        environment = {**os.environ, "PYTHONPATH": str(self.tree), "MTA_MIGRATIONS_DIR": str(self.tree / "queue")}
        command = [sys.executable, "-m", "mta", "--config", str(self.config_path), "serve"]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory,
                                            start_new_session=True, env=environment)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        url = f"http://{LOOPBACK}:{self.http_port}/health"
        deadline = time.monotonic() + START_TIMEOUT
        last_error = "no answer"
        while time.monotonic() < deadline:
            self.check_running()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as error:
                last_error = f"HTTP {error.code}: {error.read().decode(errors='replace').strip()}"
            except OSError as error:
                last_error = str(error)
            time.sleep(0.1)
        raise MtaError(f"mta /health did not return 200 within {START_TIMEOUT:.0f} s: {last_error}")

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise MtaError(f"mta exited with status {self.process.returncode}, see its log {self.log_path}")

    def cpu_seconds(self) -> float:
        """Return the CPU seconds (user + system) of the MTA's processes, without its PostgreSQL."""
        return tree_cpu_seconds(psutil.Process(self.process.pid))

    def stop(self) -> None:
        if self.process is None:
            return
        process = psutil.Process(self.process.pid)
        workers = descendants([process])
        if self.process.poll() is None:
            # SIGTERM lets the worker finish deliveries in flight and close cached connections.
            stop_process(process, signal.SIGTERM)
        self.process.wait()
        kill_leftovers(workers)

    def problems(self) -> tuple[list[str], list[str]]:
        """Return the log's warning lines and its lines at error level or worse."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        matches = [(line, PROBLEM_LINE.search(line)) for line in lines]
        warnings = [line for line, match in matches if match and match.group(1) == "warning"]
        errors = [line for line, match in matches if match and match.group(1) in FAILURE_LEVELS]
        return warnings, errors
