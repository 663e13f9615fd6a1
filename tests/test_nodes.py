"""Two nodes (two ``mta serve`` processes) sharing one PostgreSQL, one of them crashing or stalling."""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import create_database, query, stop_and_check
from tests.mtaprocess import MtaProcess
from tests.mx import RELAY_DOMAIN, relay_config, send_mx, wait_until

LEASE_SECONDS = 2.0


def start_nodes(pg, dns, sink_port: int, tmp_path: Path, config: dict) -> list[MtaProcess]:
    """Start nodes a and b on one database, with one master key and one body store, as a cluster shares them."""
    url = create_database(pg)
    shared = {"storage": {"path": str(tmp_path / "blobs"), "master_key_file": str(tmp_path / "master.key")}}
    nodes = []
    for name in ("a", "b"):
        workdir = tmp_path / name
        workdir.mkdir()
        nodes.append(MtaProcess(workdir, url, dns.port, sink_port, config | shared))
    for node in nodes:
        node.start()
    return nodes


@pytest.fixture
def two_nodes(pg, dns, sink_port, tmp_path: Path) -> Iterator[tuple[MtaProcess, MtaProcess]]:
    nodes = start_nodes(pg, dns, sink_port, tmp_path, relay_config(sink_port, lease_seconds=LEASE_SECONDS))
    yield nodes[0], nodes[1]
    stop_and_check(nodes)


def delivered_events(node: MtaProcess) -> list[str]:
    rows = query(node.database_url, "SELECT recipient FROM delivery_event WHERE status = 'delivered'")
    return sorted(row["recipient"] for row in rows)


def test_killed_node_work_taken_over_once(two_nodes, sink):
    a, b = two_nodes
    # The first connection's first RCPT hangs, so one message is mid-delivery when node a dies.
    sink.script.rcpt_delays = deque([60.0])
    recipients = [f"user{number}@{RELAY_DOMAIN}" for number in range(5)]
    for recipient in recipients:
        code, text = send_mx(a, "sender@example.net", recipient)
        assert code == 250, text
    assert sink.rcpt_seen.wait(20), "node a never started delivering"
    assert wait_until(lambda: len(sink.messages) == 4)

    a.kill()

    arrived = sink.wait_for(5, timeout=30)
    assert sorted(recipient for message in arrived for recipient in message.recipients) == recipients
    time.sleep(LEASE_SECONDS + 1)
    assert len(sink.messages) == 5
    assert wait_until(lambda: "attempt=2" in b.log())
    assert delivered_events(b) == recipients
    assert query(b.database_url, "SELECT id FROM delivery") == []


def test_stalled_node_cannot_settle_after_takeover(two_nodes, sink):
    a, b = two_nodes
    sink.script.rcpt_delays = deque([LEASE_SECONDS * 2])
    code, text = send_mx(a, "sender@example.net", f"user@{RELAY_DOMAIN}")
    assert code == 250, text
    assert sink.rcpt_seen.wait(20), "node a never started delivering"

    # Node a stops mid-delivery, past its lease: node b takes the row over and delivers it.
    os.kill(a.process.pid, signal.SIGSTOP)
    try:
        assert sink.wait_for(1, timeout=20)
        assert wait_until(lambda: "attempt=2" in b.log())
    finally:
        os.kill(a.process.pid, signal.SIGCONT)

    # Node a resumes and finishes its own transaction: a second copy may arrive
    # (at least once), but the history records only node b's settlement.
    assert wait_until(lambda: "lease lost before settling attempt 1" in a.log())
    assert delivered_events(b) == [f"user@{RELAY_DOMAIN}"]
    assert query(b.database_url, "SELECT id FROM delivery") == []


def test_nodes_share_a_sites_concurrency_cap(pg, dns, sink, sink_port, tmp_path):
    config = relay_config(sink_port)
    config["delivery"]["sites"] = {"initial_concurrency": 2, "overrides": {RELAY_DOMAIN: {"max_concurrency": 2}}}
    nodes = start_nodes(pg, dns, sink_port, tmp_path, config)
    try:
        for node in nodes:
            assert wait_until(lambda node=node: "2 live node(s)" in node.log())
        sink.script.rcpt_delays = deque([0.5] * 8)

        for number in range(8):
            code, text = send_mx(nodes[number % 2], "sender@example.net", f"user{number}@{RELAY_DOMAIN}")
            assert code == 250, text

        assert len(sink.wait_for(8)) == 8
        # Each node's share of the cap is 1. Without sharing, each node would open 2.
        assert sink.max_in_transaction <= 2
    finally:
        stop_and_check(nodes)


def test_clean_stop_removes_node_row(two_nodes):
    a, b = two_nodes
    assert wait_until(lambda: len(query(a.database_url, "SELECT id FROM node")) == 2)

    a.stop()

    assert [row["pid"] for row in query(b.database_url, "SELECT pid FROM node")] == [b.process.pid]
