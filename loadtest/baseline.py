"""Measure relay throughput of this MTA and of Postfix under the same load.

Run it as root with ``python -m loadtest.baseline [options]``. For each relay
under test it starts Postfix's ``smtp-sink`` on a loopback port as the
destination, starts the relay with a static route to that sink, and sends
``--messages`` messages with ``smtp-source``. It reports two rates:

- accepted msg/s: messages / wall time of smtp-source, which ends when the
  relay has replied 250 to every message;
- arriving msg/s: messages / time from the start of smtp-source until the
  sink has counted every message (``smtp-sink -M`` exits at that count).

The sink exits while it receives the last message, before it replies, so
each relay keeps one deferred message per run, as expected. A run fails
when the sink counts fewer messages than were sent before ``--timeout``, or
when the relay logs an error.

The whole run happens in a network namespace that has only a loopback
interface: the script re-executes itself under ``unshare -n`` unless it is
already in one, so no packet can leave the machine whatever a default does.
Our MTA delivers through a static route and Postfix runs with DNS lookups
off, so neither uses a resolver.

With ``--sign`` both relays DKIM-sign every message (see loadtest/signing.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

from loadtest import target
from loadtest.s3_store import moto_store
from loadtest.signing import SELECTOR, SIGNING_DOMAIN, OpenDkim, SigningError, check_signature, write_key
from loadtest.webhook_receiver import WebhookReceiver

REPOSITORY = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPOSITORY / "loadtest" / "results"

SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"

LOOPBACK = "127.0.0.1"
RELAY_DOMAIN = "relay.example"
SENDER = "sender@example.net"
RECIPIENT = f"user@{RELAY_DOMAIN}"
SINK_BACKLOG = 1024

# Seconds allowed for start-up: our MTA runs initdb for its embedded
# PostgreSQL and creates keys, which takes a few seconds on 2 cores.
START_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0
POLL_INTERVAL = 0.005
LOG_TAIL_LINES = 40

# Log lines at warning level and worse. Our MTA writes "name[pid]: level:
# message" for them, as Postfix does.
PROBLEM_LINE = re.compile(r"\]: (warning|error|critical|fatal|panic): ")
FAILURE_LEVELS = ("error", "critical", "fatal", "panic")


class BenchmarkError(RuntimeError):
    """A relay or a load tool failed to start, stop or finish the run."""


@dataclass
class LoadOptions:
    messages: int
    sessions: int
    size: int
    keep_connections: bool
    timeout: float
    # Both relays DKIM-sign: this MTA for its relay network, Postfix through OpenDKIM.
    sign: bool = False


@dataclass
class RunResult:
    relay: str
    workers: int | None
    messages_sent: int
    messages_arrived: int
    source_seconds: float | None = None
    arrival_seconds: float | None = None
    accepted_per_second: float | None = None
    arriving_per_second: float | None = None
    # CPU seconds (user + system) spent during the load, per process group.
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    load_tools_cpu_seconds: float | None = None
    # An estimate of CPU seconds used by everything else on the machine,
    # this script's polling included. It is all busy CPU time minus the above.
    other_cpu_seconds: float | None = None
    deferred_log_lines: int = 0
    # With --webhook: events the receiver got by the time the last message
    # reached the sink, in all, and per second from the start of the load
    # until the last one arrived.
    webhook_events_expected: int | None = None
    webhook_events_at_load_end: int | None = None
    webhook_events: int | None = None
    webhook_events_per_second: float | None = None
    warning_lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


# --- processes and ports ---------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free at the time of the call and not handed out before."""
    return target.free_port(LOOPBACK)


def is_listening(port: int) -> bool:
    # Read from /proc/net/tcp instead of connecting, so that no SMTP session
    # is counted by the sink or logged by the relay.
    for connection in psutil.net_connections(kind="tcp4"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port:
            return True
    return False


def wait_listening(port: int, timeout: float, service: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not is_listening(port):
        if process is not None and process.poll() is not None:
            raise BenchmarkError(f"{service} exited with status {process.returncode} before listening on port {port}")
        if time.monotonic() > deadline:
            raise BenchmarkError(f"{service} is not listening on {LOOPBACK}:{port} after {timeout:.0f} s")
        time.sleep(0.05)


def stop_process(process: psutil.Process, signum: int, timeout: float = STOP_TIMEOUT) -> None:
    """Send signum to one process and wait for it to exit, then SIGKILL it if it has not."""
    try:
        process.send_signal(signum)
        process.wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        print(f"warning: pid {process.pid} did not exit within {timeout:.0f} s of signal {signum}, killing it",
              file=sys.stderr)
        process.kill()


def kill_leftovers(processes: list[psutil.Process]) -> None:
    """Kill processes of a relay that are still running after it was stopped."""
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                print(f"warning: pid {process.pid} ({process.name()}) still running, killing it", file=sys.stderr)
                process.kill()
        except psutil.NoSuchProcess:
            pass


def descendants(roots: list[psutil.Process]) -> list[psutil.Process]:
    found: dict[int, psutil.Process] = {}
    for root in roots:
        try:
            for process in [root, *root.children(recursive=True)]:
                found[process.pid] = process
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def tree_cpu_seconds(root: psutil.Process) -> float:
    """Return the CPU seconds of root and all its descendants, living or reaped.

    A reaped process is counted in the children_* times of the parent that
    waited for it. Postfix's master and PostgreSQL's postmaster reap their own
    children, so the total stays right while processes come and go. Only a
    process reaped outside the tree would be missed.
    """
    total = 0.0
    for process in descendants([root]):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def busy_cpu_seconds() -> float:
    """Return the CPU seconds all processes on the machine have used since boot."""
    times = psutil.cpu_times()
    # Linux counts guest time inside user time, and steal is time the
    # hypervisor gave to other machines.
    unused = ("idle", "iowait", "steal", "guest", "guest_nice")
    return sum(times) - sum(getattr(times, name, 0.0) for name in unused)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


def scan_log(path: Path, result: RunResult) -> None:
    """Count deferrals and collect warning-or-worse lines from a relay's log."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        result.failures.append(f"log file not found: {path}")
        return
    result.deferred_log_lines = sum("status=deferred" in line for line in lines)
    problems = [line for line in lines if PROBLEM_LINE.search(line)]
    result.warning_lines = problems[:20]
    failures = [line for line in problems if PROBLEM_LINE.search(line).group(1) in FAILURE_LEVELS]
    if failures:
        result.failures.append(f"{len(failures)} error line(s) in {path.name}, the first: {failures[0]}")


# --- the sink ----------------------------------------------------------------


class Sink:
    """smtp-sink on a loopback port, exiting after it has received the expected number of messages."""

    def __init__(self, directory: Path, expected: int, port: int | None = None, dump_dir: Path | None = None):
        self.port = port or free_port()
        self.expected = expected
        self.output_path = directory / "smtp-sink.out"
        # With dump_dir, each message is written there as a file and the sink
        # runs until stopped; without it, the sink exits at the expected count.
        self.dump_dir = dump_dir
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        # -c prints running counters (mesg=N), so a run that times out can
        # report how many messages arrived. smtp-sink requires -u as root.
        command = [SMTP_SINK, "-4", "-c", "-u", "nobody"]
        if self.dump_dir is None:
            command += ["-M", str(self.expected)]
        else:
            self.dump_dir.mkdir(mode=0o777)
            self.dump_dir.chmod(0o777)
            command += ["-d", f"{self.dump_dir}/%M"]
        command += [f"{LOOPBACK}:{self.port}", str(SINK_BACKLOG)]
        with open(self.output_path, "wb") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        wait_listening(self.port, 10.0, "smtp-sink", self.process)

    def count(self) -> int:
        counts = re.findall(rb"mesg=(\d+)", self.output_path.read_bytes())
        return int(counts[-1]) if counts else 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- the relays under test -------------------------------------------------


class OurMta:
    """``mta serve`` as a child process, with its embedded PostgreSQL under the temporary directory."""

    def __init__(self, directory: Path, workers: int, tree: Path | None = None, sign: bool = False,
                 name: str = "", extra_config: str = ""):
        # tree: another checkout of this project to run instead of the installed
        # one, for before/after figures of a change measured in one invocation.
        self.name = name or ("before" if tree is not None else "mta")
        self.tree = tree
        self.directory = directory
        self.workers = workers
        self.sign = sign
        # TOML sections appended to the generated configuration.
        self.extra_config = extra_config
        self.signing_key_path = directory / "dkim" / f"{SIGNING_DOMAIN}.{SELECTOR}.pem"
        self.port = free_port()
        self.submission_port = free_port()
        self.http_port = free_port()
        self.log_path = directory / "mta.log"
        self.process: subprocess.Popen | None = None
        self.postmaster: psutil.Process | None = None
        # Extra environment of the MTA process, such as an S3 store's credentials.
        self.environment: dict[str, str] = {}
        # A [storage] section that replaces the default local store.
        self.storage_section = ""

    def write_config(self, sink_port: int) -> Path:
        path = self.directory / "mta.toml"
        local_domains = f'"{RELAY_DOMAIN}", "{SIGNING_DOMAIN}"' if self.sign else f'"{RELAY_DOMAIN}"'
        sections = [
            f'[server]\ndata_dir = "{self.directory}"\nhostname = "mta.bench.invalid"\nworkers = {self.workers}\n',
            f'[smtp.mx]\naddress = "{LOOPBACK}"\nport = {self.port}\n',
            f'[smtp.submission]\naddress = "{LOOPBACK}"\nport = {self.submission_port}\n',
            f'[http]\naddress = "{LOOPBACK}"\nport = {self.http_port}\n',
            f'[domains]\nlocal = [{local_domains}]\ndkim_selector = "{SELECTOR}"\n',
            f'[delivery]\nnameservers = ["{LOOPBACK}"]\n',
            f'[delivery.routes]\n"{RELAY_DOMAIN}" = "{LOOPBACK}:{sink_port}"\n',
        ]
        if self.sign:
            sections.append(f'[smtp]\nrelay_networks = ["{LOOPBACK}/32"]\n')
        if self.tree is None or (self.tree / "mta" / "inbound").is_dir():
            # Postfix here checks no SPF, DKIM or DMARC on arrival, so neither does this MTA.
            sections.append("[inbound]\nspf = false\ndkim = false\ndmarc = false\n")
        if self.tree is None:
            # Earlier checkouts may not know this listener; this one gets a free port like the others.
            sections.append(f'[smtp.submissions]\naddress = "{LOOPBACK}"\nport = {free_port()}\n')
        if self.storage_section:
            sections.append(self.storage_section)
        if self.extra_config:
            sections.append(self.extra_config)
        path.write_text("\n".join(sections))
        return path

    def start(self, sink_port: int) -> None:
        config_path = self.write_config(sink_port)
        # The virtualenv's editable install may point at another checkout (a
        # shared one does), so the package is imported from the tree itself:
        # PYTHONPATH comes before the editable install's finder.
        tree = self.tree or REPOSITORY
        command = [sys.executable, "-m", "mta", "--config", str(config_path), "serve"]
        environment = {**os.environ, **self.environment, "PYTHONPATH": str(tree),
                       "MTA_MIGRATIONS_DIR": str(tree / "queue")}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, env=environment, cwd=self.directory)
        self._wait_healthy()
        self._wait_workers_started()
        self.postmaster = self._find_postmaster()

    def _wait_healthy(self) -> None:
        url = f"http://{LOOPBACK}:{self.http_port}/health"
        deadline = time.monotonic() + START_TIMEOUT
        last_error = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchmarkError(f"mta exited with status {self.process.returncode} during start-up")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as error:
                last_error = f"HTTP {error.code}: {error.read().decode(errors='replace').strip()}"
            except (urllib.error.URLError, OSError) as error:
                last_error = str(error)
            time.sleep(0.2)
        raise BenchmarkError(f"mta /health did not return 200 within {START_TIMEOUT:.0f} s: {last_error}")

    def _wait_workers_started(self) -> None:
        # /health is served by worker 0 alone, so wait for the others too.
        deadline = time.monotonic() + START_TIMEOUT
        while self.log_path.read_text(errors="replace").count(" started as node ") < self.workers:
            if time.monotonic() > deadline:
                raise BenchmarkError(f"not all {self.workers} mta workers logged their start")
            time.sleep(0.1)

    def _find_postmaster(self) -> psutil.Process:
        pid_file = self.directory / "pg" / "postmaster.pid"
        try:
            return psutil.Process(int(pid_file.read_text().split()[0]))
        except (OSError, ValueError, IndexError, psutil.NoSuchProcess) as error:
            raise BenchmarkError(f"embedded PostgreSQL not found through {pid_file}: {error}") from None

    def cpu_seconds(self) -> dict[str, float]:
        return {"mta": tree_cpu_seconds(psutil.Process(self.process.pid)),
                "postgres": tree_cpu_seconds(self.postmaster)}

    def stop(self) -> None:
        if self.process is not None:
            process = psutil.Process(self.process.pid)
            workers = descendants([process])
            if self.process.poll() is None:
                # SIGTERM lets the workers finish sessions and deliveries in flight.
                stop_process(process, signal.SIGTERM)
            self.process.wait()
            kill_leftovers(workers)
        if self.postmaster is not None:
            # mta serve stops its embedded PostgreSQL only when it exits
            # cleanly. SIGINT is PostgreSQL's fast shutdown.
            backends = descendants([self.postmaster])
            stop_process(self.postmaster, signal.SIGINT)
            kill_leftovers(backends)


class Postfix:
    """A private Postfix instance with its own configuration and queue directories."""

    name = "postfix"

    def __init__(self, directory: Path, sign: bool = False):
        self.directory = directory
        self.signing_key_path = directory / "dkim.pem"
        self.opendkim = OpenDkim(directory, self.signing_key_path) if sign else None
        self.config_dir = directory / "etc"
        self.queue_dir = directory / "spool"
        self.data_dir = directory / "data"
        self.log_path = directory / "postfix.log"
        self.port = free_port()
        self.master: psutil.Process | None = None

    def write_config(self, sink_port: int) -> None:
        for path in (self.config_dir, self.queue_dir, self.data_dir):
            path.mkdir()
        # Postfix's daemons run as the postfix user, which must reach the
        # queue directory and create master.lock in the data directory.
        self.directory.chmod(0o755)
        shutil.chown(self.data_dir, user="postfix")

        (self.config_dir / "main.cf").write_text(
            "compatibility_level = 3.6\n"
            f"config_directory = {self.config_dir}\n"
            f"queue_directory = {self.queue_dir}\n"
            f"data_directory = {self.data_dir}\n"
            # Log to a file through postlogd, because no syslog daemon runs here.
            f"maillog_file = {self.log_path}\n"
            f"maillog_file_prefixes = {self.directory}\n"
            "myhostname = postfix.bench.invalid\n"
            "mydomain = bench.invalid\n"
            "inet_interfaces = loopback-only\n"
            "inet_protocols = ipv4\n"
            "mydestination =\n"
            "local_transport = error:local delivery is disabled\n"
            "alias_maps =\n"
            "alias_database =\n"
            "mynetworks = 127.0.0.0/8\n"
            "smtpd_relay_restrictions = permit_mynetworks, reject\n"
            # Brackets: connect to this address, no MX lookup.
            f"relayhost = [{LOOPBACK}]:{sink_port}\n"
            "smtp_dns_support_level = disabled\n"
            "smtp_host_lookup = native\n"
            "smtpd_peername_lookup = no\n"
            "biff = no\n"
        )
        if self.opendkim is not None:
            # tempfail: a message the milter did not see is never relayed unsigned.
            with open(self.config_dir / "main.cf", "a") as main_cf:
                main_cf.write(f"smtpd_milters = unix:{self.opendkim.socket_path}\n"
                              "milter_default_action = tempfail\n")
        # The services a relay needs, none chrooted, so no copies of system
        # files are needed under the queue directory.
        services = [
            f"{LOOPBACK}:{self.port} inet n - n - - smtpd",
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "proxywrite unix - - n - 1 proxymap",
            "smtp unix - - n - - smtp",
            "relay unix - - n - - smtp",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ]
        (self.config_dir / "master.cf").write_text("\n".join(services) + "\n")

    def start(self, sink_port: int) -> None:
        self.write_config(sink_port)
        if self.opendkim is not None:
            self.opendkim.start()
        completed = subprocess.run([POSTFIX, "-c", str(self.config_dir), "start"],
                                   capture_output=True, text=True, timeout=60, check=False)
        if completed.returncode != 0:
            # Without a terminal, the postfix command writes its errors to the
            # log, not to standard error.
            raise BenchmarkError(f"postfix start failed with status {completed.returncode}: "
                                 f"{completed.stderr.strip()}\n{tail(self.log_path)}")
        pid_file = self.queue_dir / "pid" / "master.pid"
        try:
            self.master = psutil.Process(int(pid_file.read_text().split()[0]))
        except (OSError, ValueError, IndexError, psutil.NoSuchProcess) as error:
            raise BenchmarkError(f"Postfix master not found through {pid_file}: {error}") from None
        wait_listening(self.port, START_TIMEOUT, "postfix smtpd")

    def cpu_seconds(self) -> dict[str, float]:
        seconds = {"postfix": tree_cpu_seconds(self.master)}
        if self.opendkim is not None:
            seconds["opendkim"] = self.opendkim.cpu_seconds()
        return seconds

    def stop(self) -> None:
        if self.master is None:
            return
        children = descendants([self.master])
        completed = subprocess.run([POSTFIX, "-c", str(self.config_dir), "stop"],
                                   capture_output=True, text=True, timeout=60, check=False)
        if completed.returncode != 0:
            print(f"warning: postfix stop failed with status {completed.returncode}, "
                  f"sending SIGTERM to master pid {self.master.pid}", file=sys.stderr)
        stop_process(self.master, signal.SIGTERM)
        kill_leftovers(children)
        if self.opendkim is not None:
            self.opendkim.stop()


# --- one measured run --------------------------------------------------------


def source_command(port: int, load: LoadOptions) -> list[str]:
    command = [SMTP_SOURCE, "-4", "-s", str(load.sessions), "-m", str(load.messages), "-l", str(load.size),
               "-f", SENDER, "-t", RECIPIENT, "-M", f"[{LOOPBACK}]"]
    if load.keep_connections:
        command.append("-d")
    return [*command, f"{LOOPBACK}:{port}"]


def measure(relay: OurMta | Postfix, sink: Sink, load: LoadOptions, result: RunResult) -> None:
    """Send the load to the relay, time acceptance and arrival, and record both in result."""
    source_output = relay.directory / "smtp-source.out"
    cpu_before = relay.cpu_seconds()
    tools_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before = busy_cpu_seconds()

    started = time.perf_counter()
    deadline = started + load.timeout
    with open(source_output, "wb") as output:
        source = subprocess.Popen(source_command(relay.port, load), stdout=output, stderr=subprocess.STDOUT)

    source_done = arrival_done = None
    while source_done is None or arrival_done is None:
        now = time.perf_counter()
        if source_done is None and source.poll() is not None:
            source_done = now
            if source.returncode != 0:
                result.failures.append(f"smtp-source exited with status {source.returncode}: "
                                       f"{tail(source_output, 5)}")
                break
        if arrival_done is None and sink.process.poll() is not None:
            arrival_done = now
            if sink.process.returncode != 0:
                result.failures.append(f"smtp-sink exited with status {sink.process.returncode}: "
                                       f"{tail(sink.output_path, 5)}")
                break
        if isinstance(relay, OurMta) and relay.process.poll() is not None:
            result.failures.append(f"mta exited with status {relay.process.returncode} during the load")
            break
        if now > deadline:
            result.failures.append(f"timed out after {load.timeout:.0f} s: "
                                   f"smtp-source {'finished' if source_done else 'still running'}, "
                                   f"{sink.count()} of {load.messages} messages arrived")
            break
        time.sleep(POLL_INTERVAL)

    # CPU is read as soon as the load ends, so the relay's shutdown is left out.
    result.cpu_seconds = {name: round(seconds - cpu_before.get(name, 0.0), 2)
                          for name, seconds in relay.cpu_seconds().items()}
    busy = busy_cpu_seconds() - busy_before
    if source.poll() is None:
        source.kill()
    source.wait()
    sink.stop()
    tools_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.load_tools_cpu_seconds = round(tools_after.ru_utime + tools_after.ru_stime
                                          - tools_before.ru_utime - tools_before.ru_stime, 2)
    result.other_cpu_seconds = round(busy - sum(result.cpu_seconds.values()) - result.load_tools_cpu_seconds, 2)

    result.messages_arrived = sink.count()
    if result.messages_arrived < load.messages and not result.failures:
        result.failures.append(f"only {result.messages_arrived} of {load.messages} messages arrived at the sink")
    if source_done is not None:
        result.source_seconds = round(source_done - started, 3)
        result.accepted_per_second = round(load.messages / (source_done - started), 1)
    if arrival_done is not None and result.messages_arrived >= load.messages:
        result.arrival_seconds = round(arrival_done - started, 3)
        result.arriving_per_second = round(load.messages / (arrival_done - started), 1)


def measure_webhooks(webhooks: WebhookReceiver, events_before: int, started: float, load: LoadOptions,
                     result: RunResult) -> None:
    """Record the events received by the end of the load, then wait for the rest and record the rate.

    Each message makes two events: accepted, and delivered (or deferred for
    the last one, which the sink takes without a reply).
    """
    result.webhook_events_expected = 2 * load.messages
    result.webhook_events_at_load_end = webhooks.count - events_before
    total = webhooks.wait_drained(events_before + result.webhook_events_expected, started + load.timeout)
    result.webhook_events = total - events_before
    if result.webhook_events and webhooks.last_at > started:
        result.webhook_events_per_second = round(result.webhook_events / (webhooks.last_at - started), 1)


def run_relay(kind: str, load: LoadOptions, workers: int, temp_root: Path, keep_temp: bool,
              before_tree: Path | None = None, webhooks: WebhookReceiver | None = None) -> RunResult:
    if kind == "mta-s3":
        with moto_store() as (storage_section, environment):
            return _run_relay(kind, load, workers, temp_root, keep_temp, before_tree, webhooks,
                              storage_section, environment)
    return _run_relay(kind, load, workers, temp_root, keep_temp, before_tree, webhooks)


def _run_relay(kind: str, load: LoadOptions, workers: int, temp_root: Path, keep_temp: bool,
               before_tree: Path | None, webhooks: WebhookReceiver | None = None, storage_section: str = "",
               environment: dict | None = None) -> RunResult:
    directory = Path(tempfile.mkdtemp(prefix=f"baseline-{kind}-", dir=temp_root))
    if kind == "postfix":
        relay = Postfix(directory, load.sign)
    elif kind == "before":
        relay = OurMta(directory, workers, before_tree, load.sign, extra_config=webhooks.config() if webhooks else "")
    else:
        relay = OurMta(directory, workers, None, load.sign, name=kind,
                       extra_config=webhooks.config() if webhooks else "")
        relay.storage_section = storage_section
        relay.environment = environment or {}
    result = RunResult(relay=kind, workers=None if kind == "postfix" else workers,
                       messages_sent=load.messages, messages_arrived=0)
    sink = Sink(directory, load.messages)
    print(f"{kind}: starting in {directory}", flush=True)
    try:
        if load.sign:
            check_relay_signs(relay, sink.port, load)
        else:
            relay.start(sink.port)
        sink.start()
        print(f"{kind}: listening on {LOOPBACK}:{relay.port}, sending {load.messages} messages", flush=True)
        events_before, started = (webhooks.count if webhooks else 0), time.perf_counter()
        measure(relay, sink, load, result)
        if webhooks is not None and kind != "postfix":
            measure_webhooks(webhooks, events_before, started, load, result)
    except (BenchmarkError, SigningError, OSError, subprocess.SubprocessError) as error:
        result.failures.append(str(error))
    finally:
        sink.stop()
        try:
            relay.stop()
        finally:
            scan_log(relay.log_path, result)
            report_run(result, relay.log_path)
            if keep_temp:
                print(f"{kind}: kept {directory}")
            else:
                shutil.rmtree(directory, ignore_errors=True)
    return result


def check_relay_signs(relay: OurMta | Postfix, sink_port: int, load: LoadOptions) -> None:
    """Start the relay with a new key and check the signature on one message it relays.

    A dumping sink takes the sink's port for this one message and is then
    stopped, so the counting sink starts afterwards on the same port.
    """
    key = write_key(relay.signing_key_path)
    check_directory = relay.directory / "sign-check"
    check_directory.mkdir()
    # smtp-sink runs as nobody, which must pass through the relay's directory to write the dump.
    relay.directory.chmod(0o711)
    dump = Sink(check_directory, 1, port=sink_port, dump_dir=check_directory / "messages")
    try:
        dump.start()
        relay.start(sink_port)
        one = LoadOptions(1, 1, load.size, False, load.timeout)
        subprocess.run(source_command(relay.port, one), capture_output=True, timeout=60, check=True)
        message = wait_for_dump(dump.dump_dir)
    finally:
        dump.stop()
    check_signature(message, key)
    print(f"{relay.name}: the relayed message is signed by {SELECTOR}._domainkey.{SIGNING_DOMAIN}", flush=True)


def wait_for_dump(directory: Path, timeout: float = 60.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = list(directory.iterdir())
        if files:
            # smtp-sink writes the file while it reads DATA; give it time to finish.
            time.sleep(0.2)
            return files[0].read_bytes()
        time.sleep(0.05)
    raise BenchmarkError(f"the signing check's message did not reach the sink within {timeout:.0f} s")


def save_failed_log(log_path: Path, kind: str) -> None:
    if not log_path.exists():
        return
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    saved = RESULTS_DIR / f"failed-{kind}-{timestamp()}.log"
    shutil.copyfile(log_path, saved)
    print(f"{kind}: log saved as {saved}")


def report_run(result: RunResult, log_path: Path) -> None:
    """Print the outcome of one run; on failure also the tail of the relay's log, and keep a copy of it."""
    for line in result.warning_lines[:5]:
        print(f"{result.relay}: log: {line}", file=sys.stderr)
    if result.ok:
        print(f"{result.relay}: {result.messages_arrived} of {result.messages_sent} arrived, "
              f"accepted {result.accepted_per_second} msg/s, arriving {result.arriving_per_second} msg/s, "
              f"CPU {result.cpu_seconds} s, {result.deferred_log_lines} deferral(s) logged", flush=True)
        if result.webhook_events_expected is not None:
            print(f"{result.relay}: webhooks: {result.webhook_events_at_load_end} of "
                  f"{result.webhook_events_expected} events received when the load ended, "
                  f"{result.webhook_events} in all, {result.webhook_events_per_second} events/s", flush=True)
        return

    print(f"{result.relay}: RUN FAILED", file=sys.stderr)
    for failure in result.failures:
        print(f"  {failure}", file=sys.stderr)
    print(f"--- last {LOG_TAIL_LINES} lines of {log_path} ---\n{tail(log_path)}\n---", file=sys.stderr)
    save_failed_log(log_path, result.relay)


# --- machine description and the report ------------------------------------


def measure_fsync_microseconds(directory: Path, count: int = 200) -> float:
    """Return the median time in µs to write 4 KiB and fsync it, in directory."""
    samples = []
    block = os.urandom(4096)
    with tempfile.TemporaryFile(dir=directory) as file:
        for _ in range(count):
            started = time.perf_counter()
            file.write(block)
            file.flush()
            os.fsync(file.fileno())
            samples.append(time.perf_counter() - started)
    return round(statistics.median(samples) * 1e6, 1)


def describe_machine(temp_root: Path) -> dict:
    model = "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                      if line.startswith("Model name")), model)
    except (OSError, subprocess.SubprocessError):
        pass
    postfix_version = subprocess.run([POSTCONF, "-d", "-h", "mail_version"],
                                     capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postfix": postfix_version,
        "fsync_4k_median_us": measure_fsync_microseconds(temp_root),
    }


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if not ours or not theirs:
        return None
    return round(ours / theirs, 2)


def median_of(results: list[RunResult], name: str) -> float | None:
    values = [getattr(result, name) for result in results if result.ok and getattr(result, name)]
    return round(statistics.median(values), 1) if values else None


def cpu_per_message_ms(results: list[RunResult]) -> float | None:
    values = [sum(result.cpu_seconds.values()) * 1000 / result.messages_sent for result in results if result.ok]
    return round(statistics.median(values), 3) if values else None


# The medians compared between relays, with their labels.
FIGURES = (("accepted_per_second", "accepted msg/s"), ("arriving_per_second", "arriving msg/s"),
           ("cpu_ms_per_message", "CPU ms per message"), ("webhook_events_per_second", "webhook events/s"))
# Relays compared with another besides Postfix, when the first one ran: (left, right, summary key of the ratios).
COMPARISONS = (("before", "mta", "before", "ratio_mta_to_before"),
               ("mta-s3", "mta-s3", "mta", "ratio_mta_s3_to_mta"))


def print_table(results: list[RunResult]) -> dict:
    """Print each run and the medians with the ours/Postfix ratios; return the summary."""
    print()
    print(f"{'relay':<10}{'workers':>8}{'accepted/s':>12}{'arriving/s':>12}{'CPU s':>12}{'tools CPU s':>13}"
          f"{'other CPU s':>13}  status")
    for result in results:
        cpu = "+".join(f"{seconds:.1f}" for seconds in result.cpu_seconds.values()) or "-"
        print(f"{result.relay:<10}{result.workers or '-':>8}{result.accepted_per_second or '-':>12}"
              f"{result.arriving_per_second or '-':>12}{cpu:>12}{_or_dash(result.load_tools_cpu_seconds):>13}"
              f"{_or_dash(result.other_cpu_seconds):>13}  {'ok' if result.ok else 'FAILED'}")

    ours = [result for result in results if result.relay == "mta"]
    theirs = [result for result in results if result.relay == "postfix"]
    summary = {"mta": relay_medians(ours, "mta"), "postfix": relay_medians(theirs, "postfix")}
    summary["ratio_mta_to_postfix"] = {
        key: ratio(summary["mta"][key], summary["postfix"][key])
        for key, _ in FIGURES
    }
    relays = {result.relay for result in results}
    comparisons = [comparison[1:] for comparison in COMPARISONS if comparison[0] in relays]
    for left, right, ratio_key in comparisons:
        for relay in (left, right):
            summary[relay] = summary.get(relay) or relay_medians(results, relay)
        summary[ratio_key] = {key: ratio(summary[left][key], summary[right][key]) for key, _ in FIGURES}

    print()
    print("medians of the runs that succeeded; CPU columns are mta+postgres for ours")
    print_comparison(summary, "mta", "postfix", "ratio_mta_to_postfix")
    for left, right, ratio_key in comparisons:
        print_comparison(summary, left, right, ratio_key)
    return summary


def relay_medians(results: list[RunResult], relay: str) -> dict:
    runs = [result for result in results if result.relay == relay]
    return {"accepted_per_second": median_of(runs, "accepted_per_second"),
            "arriving_per_second": median_of(runs, "arriving_per_second"),
            "cpu_ms_per_message": cpu_per_message_ms(runs),
            "webhook_events_per_second": median_of(runs, "webhook_events_per_second")}


def print_comparison(summary: dict, left: str, right: str, ratio_key: str) -> None:
    print(f"{'':<24}{left:>10}{right:>10}{'ratio':>8}")
    for key, label in FIGURES:
        print(f"{label:<24}{summary[left][key] or '-':>10}{summary[right][key] or '-':>10}"
              f"{summary[ratio_key][key] or '-':>8}")


def _or_dash(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def timestamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


# --- network namespace -------------------------------------------------------


def only_loopback() -> bool:
    """Return whether the current network namespace has no interface but lo."""
    return {name for _, name in socket.if_nameindex()} == {"lo"}


def reexecute_in_namespace(argv: list[str]) -> int:
    ip = shutil.which("ip") or "/usr/sbin/ip"
    command = ["unshare", "-n", "--", "sh", "-c", f'{ip} link set lo up && exec "$@"', "sh",
               sys.executable, "-m", "loadtest.baseline", *argv, "--no-unshare"]
    os.chdir(REPOSITORY)
    os.execvp("unshare", command)
    return 1  # not reached


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="messages per run (default: %(default)s)")
    parser.add_argument("--sessions", type=int, default=20,
                        help="parallel SMTP sessions of smtp-source (default: %(default)s)")
    parser.add_argument("--size", type=int, default=5120,
                        help="message body size in octets, headers not included, as smtp-source -l "
                             "(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes of our MTA, [server] workers (default: %(default)s)")
    parser.add_argument("--keep-connections", action="store_true",
                        help="send all messages of a session over one connection (smtp-source -d); "
                             "by default each message gets a new connection")
    parser.add_argument("--sign", action="store_true",
                        help="both relays DKIM-sign with one RSA-2048 key: this MTA for its relay network, "
                             "Postfix through OpenDKIM as a milter")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each relay, alternating between them (default: %(default)s)")
    parser.add_argument("--before-tree", type=Path, metavar="DIR",
                        help="also run the MTA from this other checkout (git worktree of an earlier commit)"
                             " as relay 'before', and print the ratios mta/before")
    parser.add_argument("--webhook", action="store_true",
                        help="relays mta and before send every event to a webhook receiver in this process; "
                             "each run then waits for the events to drain and reports events/s")
    parser.add_argument("--relays", default="mta,postfix",
                        help="comma-separated relays to run: mta, postfix, or mta-s3, which is this MTA with "
                             "its bodies in moto's S3 server on loopback (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds one run may take from the first message sent (default: %(default)s)")
    parser.add_argument("--temp-dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the relays' temporary directories are made (default: %(default)s)")
    parser.add_argument("--keep-temp", action="store_true",
                        help="keep each run's temporary directory with its logs and queue")
    parser.add_argument("--no-unshare", action="store_true",
                        help="run in the current network namespace, which must have no interface but lo")
    args = parser.parse_args(argv)

    if args.messages < 1 or args.sessions < 1 or args.size < 1 or args.repeat < 1:
        parser.error("--messages, --sessions, --size and --repeat must be at least 1")
    if not 1 <= args.workers <= 256:
        parser.error("--workers must be between 1 and 256")
    if args.timeout <= 0:
        parser.error("--timeout must be greater than 0")
    args.relays = [name.strip() for name in args.relays.split(",") if name.strip()]
    if args.before_tree is not None and "before" not in args.relays:
        args.relays.insert(0, "before")
    unknown = set(args.relays) - {"mta", "mta-s3", "postfix", "before"}
    if unknown or not args.relays:
        parser.error(f"--relays must name mta, mta-s3, postfix or before, got {sorted(unknown) or 'nothing'}")
    if "before" in args.relays and args.before_tree is None:
        parser.error("--relays names before, which needs --before-tree DIR")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_arguments(argv)

    if os.geteuid() != 0:
        print("error: run as root: the run needs unshare -n, and Postfix and smtp-sink start as root",
              file=sys.stderr)
        return 2
    if not only_loopback():
        if args.no_unshare:
            print("error: --no-unshare given, but this network namespace has interfaces other than lo: "
                  f"{sorted(name for _, name in socket.if_nameindex())}", file=sys.stderr)
            return 2
        return reexecute_in_namespace(argv)
    for tool in (SMTP_SINK, SMTP_SOURCE, POSTFIX, POSTCONF):
        if not os.access(tool, os.X_OK):
            print(f"error: {tool} not found: install the Debian package postfix (make loadtest-deps)",
                  file=sys.stderr)
            return 2

    load = LoadOptions(args.messages, args.sessions, args.size, args.keep_connections, args.timeout, args.sign)
    machine = describe_machine(args.temp_dir)
    print(f"machine: {machine}")
    print(f"load: {load}, mta workers {args.workers}")

    webhooks = WebhookReceiver() if args.webhook else None
    if webhooks is not None:
        webhooks.start()
        print(f"webhooks: our relays send events to {webhooks.url}")
    results = []
    try:
        for _ in range(args.repeat):
            for kind in args.relays:
                results.append(run_relay(kind, load, args.workers, args.temp_dir, args.keep_temp, args.before_tree,
                                         webhooks))
    finally:
        if webhooks is not None:
            webhooks.stop()
            print(f"webhooks: {webhooks.count} events received")
    summary = print_table(results)

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    finished = timestamp()
    path = RESULTS_DIR / f"baseline-{finished}-w{args.workers}.json"
    path.write_text(json.dumps({
        "date": finished,
        "command": ["python", "-m", "loadtest.baseline", *argv],
        "machine": machine,
        "load": asdict(load),
        "mta_workers": args.workers,
        "runs": [asdict(result) | {"ok": result.ok} for result in results],
        "summary": summary,
    }, indent=2) + "\n")
    print(f"\nresults written to {path}")
    return 0 if all(result.ok for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
