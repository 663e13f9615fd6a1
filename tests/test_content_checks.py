"""Before-queue content checks: the plug-in interface, its failure modes, and SpamAssassin's spamd as a real peer."""

from __future__ import annotations

import shutil
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import query
from tests.mtaprocess import MtaProcess
from tests.pgcluster import free_port

# GTUBE: the test string every SpamAssassin installation scores as spam.
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def send(mta: MtaProcess, subject: str, body: bytes = b"hello\r\n") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=60) as client:
        client.ehlo("client.example.net")
        client.mail("sender@example.net")
        client.rcpt("alice@example.com")
        return client.data(f"From: sender@example.net\r\nSubject: {subject}\r\n\r\n".encode() + body)


def with_checks(make_mta, checks: dict) -> MtaProcess:
    mta = make_mta({"smtp": {"checks": checks}})
    result = mta.cli("user", "add", "alice@example.com", "--password-stdin", input_text="a password\n")
    assert result.returncode == 0, result.stderr
    return mta


def quarantine_of(mta: MtaProcess, reply: bytes) -> str | None:
    queue_id = reply.decode().rsplit(" ", 1)[1]
    return query(mta.database_url, "SELECT quarantine FROM message WHERE id = $1", queue_id)[0]["quarantine"]


SUBJECT_CHECK = {"subject": {"factory": "tests.content_checks:SubjectCheck"}}


@pytest.mark.parametrize("subject, expected", [
    ("reject", (550, b"5.7.1 message rejected by content check subject: subject says reject")),
    ("tempfail", (451, b"4.7.1 message deferred by content check subject: subject says tempfail")),
])
def test_check_refuses_message(make_mta, subject, expected):
    mta = with_checks(make_mta, SUBJECT_CHECK)

    assert send(mta, subject) == expected
    assert query(mta.database_url, "SELECT id FROM message") == []


def test_check_quarantines_and_tags(make_mta):
    mta = with_checks(make_mta, SUBJECT_CHECK)

    code, reply = send(mta, "quarantine")

    assert code == 250
    assert quarantine_of(mta, reply) == "content check subject: subject says quarantine"
    assert "content checks: subject=quarantine" in mta.log()


@pytest.mark.parametrize("factory", ["tests.content_checks:SlowCheck", "tests.content_checks:FailingCheck"])
def test_failed_check_defers_by_default(make_mta, factory):
    mta = with_checks(make_mta, {"scanner": {"factory": factory, "timeout": 1.0, "options": {"seconds": 5}}})

    assert send(mta, "hello") == (451, b"4.7.1 content check scanner unavailable, try again later")


def test_failed_check_may_accept(make_mta):
    mta = with_checks(make_mta, {"scanner": {"factory": "tests.content_checks:FailingCheck", "on_failure": "accept"}})

    assert send(mta, "hello")[0] == 250
    assert "content check scanner failed: ConnectionRefusedError('scanner socket refused') (on_failure=accept)" \
        in mta.log()


def test_check_only_on_its_listeners(make_mta):
    mta = with_checks(make_mta, {"subject": {"factory": "tests.content_checks:SubjectCheck",
                                             "listeners": ["submission"]}})

    assert send(mta, "reject")[0] == 250


@pytest.mark.parametrize("factory, message", [
    ("tests.content_checks", "must look like package.module:callable"),
    ("tests.no_such_module:Check", "cannot import tests.no_such_module"),
    ("tests.content_checks:Missing", "has no callable Missing"),
])
def test_bad_factory_refused_at_start(tmp_path, factory, message):
    config = tmp_path / "mta.toml"
    config.write_text(f'[smtp.checks.scanner]\nfactory = "{factory}"\n')

    result = subprocess.run([sys.executable, "-m", "mta", "--config", str(config), "check-config"],
                            capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)

    assert result.returncode == 2
    assert message in result.stderr


def test_factory_returning_other_object_stops_start(make_mta, tmp_path):
    with pytest.raises(RuntimeError) as started:
        make_mta({"smtp": {"checks": {"scanner": {"factory": "tests.content_checks:not_a_check"}}}})

    assert "start-up failed: smtp.checks: smtp.checks.scanner: tests.content_checks:not_a_check returned object" \
        in str(started.value)


@pytest.fixture(scope="module")
def spamd(tmp_path_factory) -> Iterator[int]:
    """Run SpamAssassin's spamd on loopback with local tests only (--local: no DNS or network lookups)."""
    if shutil.which("spamd") is None:
        pytest.fail("spamd is not installed: run make system-deps")
    directory = tmp_path_factory.mktemp("spamd")
    port = free_port()
    process = subprocess.Popen(
        ["spamd", f"--listen=127.0.0.1:{port}", "--local", "--nouser-config", "--max-children=1",
         "--syslog=stderr", f"--pidfile={directory / 'spamd.pid'}", "--username=nobody"],
        stdout=subprocess.DEVNULL, stderr=open(directory / "spamd.log", "wb"))
    try:
        wait_for_pong(port, timeout=60)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_for_pong(port: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
                if b"PONG" in sock.recv(100):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"spamd did not answer PING on port {port} within {timeout} s")


def spamd_checks(port: int) -> dict:
    return {"spamassassin": {"factory": "mta.smtp.spamd:SpamdCheck",
                             "options": {"port": port, "reject_score": 50}}}


def test_spamd_rejects_gtube(make_mta, spamd):
    mta = with_checks(make_mta, spamd_checks(spamd))

    code, reply = send(mta, "offer", GTUBE + b"\r\n")

    assert code == 550
    assert reply.startswith(b"5.7.1 message rejected by content check spamassassin: spam score ")
    score = float(reply.split(b"spam score ")[1].split(b",")[0])
    assert score >= 1000


def test_spamd_tags_ham(make_mta, sink_port, spamd):
    mta = with_checks(make_mta, spamd_checks(spamd))

    code, reply = send(mta, "lunch", b"Shall we meet at noon?\r\n")

    assert code == 250
    assert quarantine_of(mta, reply) is None
    assert "content checks: spamassassin=accept" in mta.log()
