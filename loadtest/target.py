"""The MTA under test: ``mta serve`` in a temporary directory, set up for a load model.

It gets the model's local domain, static routes that send every remote domain
to the sink (one loopback address per domain, like separate MX hosts), its
own embedded PostgreSQL, and the model's users: every mailbox exists so MX
traffic is accepted, and the first ``auth_users`` can log in on submission.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"
PASSWORD = "loadtest-password"
START_TIMEOUT = 60.0

_DEPTH_LINE = re.compile(r'^mta_queue_depth\{state="\w+"\} ([0-9.e+]+)$', re.MULTILINE)


# Ports already handed out: the kernel may offer a closed port again at once,
# and two MTA listeners given one port would share it through SO_REUSEPORT.
_issued: set[int] = set()


def free_port(host: str = LOOPBACK) -> int:
    """Return a port free on host now and never returned before in this process."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _issued:
            _issued.add(port)
            return port


class TargetError(Exception):
    """The MTA under test failed to start or stopped during the run."""


class MtaUnderTest:
    def __init__(self, workers: int, domain: str, routes: dict[str, str], users: int, auth_users: int,
                 lease_seconds: float = 30.0, temp_root: Path | None = None,
                 extra_local_domains: tuple[str, ...] = (), tree: Path | None = None,
                 relay_networks: tuple[str, ...] = (), dkim_selector: str = "mta"):
        # A short lease lets a killed node's messages be retried within a run;
        # production keeps the default of 300 s.
        self.lease_seconds = lease_seconds
        self.directory = Path(tempfile.mkdtemp(prefix="loadtest-mta-", dir=temp_root))
        self.workers = workers
        self.domain = domain
        # Further domains received on MX, usually relayed by a route (like Postfix's relay_domains).
        self.extra_local_domains = tuple(extra_local_domains)
        # Another checkout to run instead of the installed package, for before/after figures.
        self.tree = tree
        self.routes = routes
        # Clients that relay without AUTH, their mail signed with the selector's keys.
        self.relay_networks = tuple(relay_networks)
        self.dkim_selector = dkim_selector
        self.users = users
        self.auth_users = auth_users
        self.mx_port = free_port()
        self.submission_port = free_port()
        self.http_port = free_port()
        self.config_path = self.directory / "mta.toml"
        self.log_path = self.directory / "mta.log"
        self.process: subprocess.Popen | None = None

    def _mta(self) -> list[str]:
        return [sys.executable, "-m", "mta", "--config", str(self.config_path)]

    def _environment(self) -> dict[str, str] | None:
        if self.tree is None:
            return None
        # PYTHONPATH comes before the editable install's finder, so the tree's package is imported.
        return {**os.environ, "PYTHONPATH": str(self.tree), "MTA_MIGRATIONS_DIR": str(self.tree / "queue")}

    def write_config(self) -> None:
        routes = "\n".join(f'"{domain}" = "{target}"' for domain, target in self.routes.items())
        sections = [
            (f'[server]\ndata_dir = "{self.directory / "var"}"\nhostname = "mta.loadtest.invalid"\n'
             f"workers = {self.workers}\n"),
            f'[smtp.mx]\naddress = "{LOOPBACK}"\nport = {self.mx_port}\n',
            f'[smtp.submission]\naddress = "{LOOPBACK}"\nport = {self.submission_port}\n',
            f'[http]\naddress = "{LOOPBACK}"\nport = {self.http_port}\n',
            (f"[domains]\nlocal = {json.dumps([self.domain, *self.extra_local_domains])}\n"
             f'dkim_selector = "{self.dkim_selector}"\n'),
            f'[delivery]\nnameservers = ["{LOOPBACK}"]\nlease_seconds = {self.lease_seconds}\n',
            f"[delivery.routes]\n{routes}\n",
        ]
        if self.tree is None or (self.tree / "mta" / "inbound").is_dir():
            # Postfix here checks no SPF, DKIM or DMARC on arrival, so neither does this MTA.
            sections.append("[inbound]\nspf = false\ndkim = false\ndmarc = false\n")
        if self.tree is None:
            # Earlier checkouts may not know this listener; this one gets a free port like the others.
            sections.append(f'[smtp.submissions]\naddress = "{LOOPBACK}"\nport = {free_port()}\n')
        if self.relay_networks:
            # Only when set, so that earlier checkouts without the setting still start.
            sections.append(f"[smtp]\nrelay_networks = {json.dumps(list(self.relay_networks))}\n")
        self.config_path.write_text("\n".join(sections))

    def start(self) -> None:
        self.write_config()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self._mta() + ["serve"], stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.directory, start_new_session=True, env=self._environment())
        self._wait_healthy()
        self._import_users()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TargetError(f"mta exited with status {self.process.returncode} during start-up:\n"
                                  f"{self.log_tail()}")
            if self.health()[0] == 200:
                return
            time.sleep(0.2)
        raise TargetError(f"mta did not become healthy within {START_TIMEOUT:.0f}s:\n{self.log_tail()}")

    def _import_users(self) -> None:
        listing = self.directory / "users.txt"
        with open(listing, "w") as file:
            for number in range(self.users):
                password = f" {PASSWORD}" if number < self.auth_users else ""
                file.write(f"user{number}@{self.domain}{password}\n")
        result = subprocess.run(self._mta() + ["user", "import", str(listing)], capture_output=True,
                                text=True, timeout=600, cwd=self.directory, env=self._environment())
        if result.returncode != 0:
            raise TargetError(f"user import failed: {result.stderr.strip()}")

    def health(self) -> tuple[int, str]:
        return self._get("/health")

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.http_port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError as error:
            return 0, repr(error)

    def queue_depth(self) -> int | None:
        status, text = self._get("/metrics")
        if status != 200:
            return None
        return int(sum(float(value) for value in _DEPTH_LINE.findall(text)))

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.directory / "var" / "pg" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill(self) -> None:
        """Kill every MTA process with SIGKILL, as a crash would; PostgreSQL stays up."""
        if self.process is None or self.process.poll() is not None:
            return
        root = psutil.Process(self.process.pid)
        # The embedded PostgreSQL may share the process group, so kill by tree and by name.
        victims = [root] + [child for child in root.children(recursive=True) if child.name() != "postgres"]
        for victim in victims:
            try:
                victim.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.process.wait(timeout=30)

    def restart(self) -> None:
        self.kill()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self._mta() + ["serve"], stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.directory, start_new_session=True, env=self._environment())
        self._wait_healthy()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        self._stop_postgres()

    def _stop_postgres(self) -> None:
        # The MTA stops the PostgreSQL it started, but not one that a fault
        # restarted behind its back: stop whatever still runs on this data.
        pid = self.postmaster_pid()
        if pid is None or not psutil.pid_exists(pid):
            return
        try:
            postmaster = psutil.Process(pid)
            if postmaster.name() != "postgres":
                return
            postmaster.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            postmaster.wait(timeout=30)
        except (psutil.NoSuchProcess, psutil.TimeoutExpired):
            pass

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
