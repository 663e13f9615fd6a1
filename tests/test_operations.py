"""What an operator touches: health, metrics, the queue commands, logs, workers, config errors."""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
import urllib.error
import urllib.request
from collections import deque

import psutil
import pytest

from tests.conftest import REMOTE_MX_ADDRESS, query
from tests.mtaprocess import REPOSITORY
from tests.mx import RELAY_DOMAIN, relay_config, send_mx, wait_until


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_deferred_message_listed_then_flushed(make_mta, sink, sink_port):
    extra = relay_config(sink_port, retry_schedule=[3600.0])
    extra["http"] = {"backlog_threshold": 0}
    mta = make_mta(extra)
    sink.script.rcpt_replies = deque(["451 4.7.1 greylisted"])

    code, text = send_mx(mta, "sender@example.net", f"user@{RELAY_DOMAIN}")
    assert code == 250
    queue_id = text.decode().rsplit(" ", 1)[1]

    listing = wait_until(lambda: "451 4.7.1 greylisted" in (out := mta.cli("queue", "list").stdout) and out)
    assert queue_id in listing
    assert "deferred" in listing
    status, body = http_get(mta.http_port, "/health")
    assert status == 503
    assert "backlog: 1 queued deliveries" in body

    result = mta.cli("queue", "flush")
    assert result.returncode == 0, result.stderr
    assert "1 delivery made due now" in result.stdout
    assert len(sink.wait_for(1)) == 1
    assert wait_until(lambda: http_get(mta.http_port, "/health")[0] == 200)
    assert "0 deliveries in the queue" in mta.cli("queue", "list").stdout


def test_log_follows_one_message(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port))

    code, text = send_mx(mta, "sender@example.net", f"user@{RELAY_DOMAIN}")
    queue_id = text.decode().rsplit(" ", 1)[1]
    sink.wait_for(1)

    lines = wait_until(lambda: [line for line in mta.log().splitlines() if queue_id in line and "status=sent" in line]
                       and [line for line in mta.log().splitlines() if queue_id in line])
    assert any("(queued)" in line and "from=<sender@example.net>" in line for line in lines)
    assert any(f"to=<user@{RELAY_DOMAIN}>" in line and f"relay={REMOTE_MX_ADDRESS}" in line
               and "dsn=2.0.0, status=sent" in line for line in lines)


def test_metrics_count_accepted_and_delivered(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port))

    send_mx(mta, "sender@example.net", f"user@{RELAY_DOMAIN}")
    sink.wait_for(1)

    def scraped() -> str:
        text = http_get(mta.http_port, "/metrics")[1]
        return text if 'mta_deliveries_total{outcome="sent"} 1.0' in text else ""

    text = wait_until(scraped)
    assert 'mta_messages_accepted_total{listener="mx"} 1.0' in text
    assert 'mta_queue_depth{state="due"} 0.0' in text
    assert "mta_delivery_latency_seconds_count 1.0" in text


def test_health_reports_database_outage(make_mta, pg):
    from tests.pgcluster import PgCluster

    cluster = PgCluster()
    cluster.init()
    cluster.start()
    try:
        mta = make_mta(cluster=cluster)
        assert http_get(mta.http_port, "/health")[0] == 200
        cluster.stop()
        status, body = http_get(mta.http_port, "/health")
        assert status == 503
        assert "database unreachable" in body
        cluster.start()
        assert wait_until(lambda: http_get(mta.http_port, "/health")[0] == 200, timeout=20)
    finally:
        cluster.destroy()


def test_two_workers_share_the_listeners(make_mta, sink, sink_port):
    extra = relay_config(sink_port)
    extra["server"] = {"workers": 2}
    mta = make_mta(extra)

    workers = psutil.Process(mta.process.pid).children()
    assert len(workers) == 2

    for number in range(20):
        with smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=30) as client:
            client.sendmail("sender@example.net", [f"user{number}@{RELAY_DOMAIN}"],
                            f"Subject: {number}\r\n\r\nbody\r\n".encode())
    assert len(sink.wait_for(20)) == 20

    pids = {int(line.split("[", 1)[1].split("]", 1)[0]) for line in mta.log().splitlines()
            if "(queued)" in line}
    assert pids <= {worker.pid for worker in workers}

    text = wait_until(lambda: (t := http_get(mta.http_port, "/metrics")[1])
                      and 'mta_messages_accepted_total{listener="mx"} 20.0' in t and t)
    assert text


def test_invalid_config_exits_2(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[smtp]\nmax_recipients = "many"\n')
    result = subprocess.run([sys.executable, "-m", "mta", "--config", str(config), "check-config"],
                            capture_output=True, text=True, cwd=REPOSITORY, timeout=30)
    assert result.returncode == 2
    assert "smtp.max_recipients must be of type int" in result.stderr


def test_unknown_config_key_named(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[delivery]\nsource_adresses = []\n")
    result = subprocess.run([sys.executable, "-m", "mta", "--config", str(config), "check-config"],
                            capture_output=True, text=True, cwd=REPOSITORY, timeout=30)
    assert result.returncode == 2
    assert "unknown configuration key: delivery.source_adresses (did you mean source_addresses?)" in result.stderr


def test_user_add_rejects_bad_address(make_mta):
    mta = make_mta()
    result = mta.cli("user", "add", "not-an-address", "--password-stdin", input_text="long enough\n")
    assert result.returncode == 2
    assert "invalid address" in result.stderr
    assert query(mta.database_url, "SELECT address FROM mailbox_user") == []


def test_sigterm_loses_no_accepted_message(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port))

    with smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=30) as client:
        client.ehlo("client.example.net")
        client.mail("sender@example.net")
        client.rcpt(f"user@{RELAY_DOMAIN}")
        mta.process.terminate()
        code, text = client.data(b"Subject: during shutdown\r\n\r\nbody\r\n")
    assert mta.process.wait(timeout=40) == 0

    stored = query(mta.database_url, "SELECT id FROM message")
    if code == 250:
        assert [row["id"] for row in stored] == [text.decode().rsplit(" ", 1)[1]]
    else:
        assert (code, text[:5]) == (451, b"4.3.0")
        assert stored == []


def test_sigterm_during_delivery_releases_lease(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port, stop_grace=0.5))
    sink.script.data_delays = deque([30.0])

    code, text = send_mx(mta, "sender@example.net", f"user@{RELAY_DOMAIN}")
    assert code == 250
    queue_id = text.decode().rsplit(" ", 1)[1]
    assert sink.data_seen.wait(timeout=10)
    mta.process.terminate()
    assert mta.process.wait(timeout=20) == 0

    (row,) = query(mta.database_url, "SELECT lease_owner, attempts FROM delivery WHERE message_id = $1", queue_id)
    assert row["lease_owner"] is None
    assert row["attempts"] == 0
    assert sink.messages == []

    mta.start()
    (received,) = sink.wait_for(1)
    assert received.recipients == [f"user@{RELAY_DOMAIN}"]
    assert wait_until(lambda: not query(mta.database_url, "SELECT id FROM delivery WHERE message_id = $1", queue_id))


def test_user_import_locked_and_password(make_mta, tmp_path):
    mta = make_mta()
    listing = tmp_path / "users.txt"
    listing.write_text("# mailboxes\nreader@example.com\nwriter@example.com long-enough-password\n")

    result = mta.cli("user", "import", str(listing))
    assert result.returncode == 0, result.stderr
    assert "2 users saved" in result.stdout

    rows = query(mta.database_url, "SELECT address, password_hash FROM mailbox_user ORDER BY address")
    assert [row["address"] for row in rows] == ["reader@example.com", "writer@example.com"]
    assert rows[0]["password_hash"] == "locked"
    assert rows[1]["password_hash"].startswith("scrypt$")

    with smtplib.SMTP("127.0.0.1", mta.submission_port, timeout=30) as client:
        client.starttls()
        try:
            client.login("reader@example.com", "locked")
            logged_in = True
        except smtplib.SMTPAuthenticationError:
            logged_in = False
    assert not logged_in


def test_user_import_rejects_bad_line(make_mta, tmp_path):
    mta = make_mta()
    listing = tmp_path / "users.txt"
    listing.write_text("good@example.com\nnot an address\n")

    result = mta.cli("user", "import", str(listing))
    assert result.returncode == 2
    assert "users.txt:2: invalid address" in result.stderr
    assert query(mta.database_url, "SELECT address FROM mailbox_user") == []


@pytest.mark.parametrize("table, line, message", [
    ("delivery", 'retry_schedule = ["a"]', "delivery.retry_schedule[0] must be of type float"),
    ("delivery", "retry_schedule = [60, -5]", "delivery.retry_schedule[1] must be between 1 and 604800"),
    ("server", 'log_level = "loud"', "server.log_level must be one of debug, info, warning, error"),
    ("server", 'hostname = ""', "server.hostname must not be empty"),
    ("delivery", "connect_timeout = -1.0", "delivery.connect_timeout must be between"),
    ("delivery", "concurrency = 0", "delivery.concurrency must be between 1 and"),
    ("database", "pool_min = 20", "database.pool_min (20) must not exceed database.pool_max (10)"),
    ("smtp.mx", "enabled = 1", "smtp.mx.enabled must be of type bool"),
    ("delivery.routes", '"a.example" = 25', "delivery.routes.a.example must be of type str"),
    ("delivery.routes", '"a.example" = "host-without-port"', "must be 'host:port'"),
])
def test_config_value_checked(tmp_path, table, line, message):
    config = tmp_path / "bad.toml"
    config.write_text(f"[{table}]\n{line}\n")
    result = subprocess.run([sys.executable, "-m", "mta", "--config", str(config), "check-config"],
                            capture_output=True, text=True, cwd=REPOSITORY, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr


def test_password_change_ends_cached_login(make_mta):
    mta = make_mta()

    def login(password: str) -> bool:
        with smtplib.SMTP("127.0.0.1", mta.submission_port, timeout=30) as client:
            client.starttls()
            try:
                client.login("carol@example.com", password)
                return True
            except smtplib.SMTPAuthenticationError:
                return False

    assert mta.cli("user", "add", "carol@example.com", "--password-stdin", input_text="first-password\n").returncode == 0
    assert login("first-password")
    assert login("first-password")

    assert mta.cli("user", "add", "carol@example.com", "--password-stdin", input_text="second-password\n").returncode == 0
    assert not login("first-password")
    assert login("second-password")


def test_cli_import_leaves_metrics_unloaded():
    # mta serve sets up multiprocess metrics after parsing its arguments, so
    # the command-line module must not load the metrics on import.
    result = subprocess.run([sys.executable, "-c", "import sys, mta.cli; print('mta.metrics' in sys.modules)"],
                            capture_output=True, text=True, cwd=REPOSITORY, timeout=60, check=True)
    assert result.stdout.strip() == "False"


def test_check_config_hides_database_password(tmp_path):
    config = tmp_path / "db.toml"
    config.write_text('[database]\nurl = "postgresql://mta:s3cr%40t@db.example:5432/mta"\n')
    result = subprocess.run([sys.executable, "-m", "mta", "--config", str(config), "check-config"],
                            capture_output=True, text=True, cwd=REPOSITORY, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "s3cr" not in result.stdout
    assert '"url": "postgresql://mta:(redacted)@db.example:5432/mta"' in result.stdout


def test_check_config_reads_key_files(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "master.key").write_bytes(os.urandom(32))
    (tmp_path / "keys" / "master.key").chmod(0o600)
    config = tmp_path / "keys.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path}"\n\n'
                      '[storage]\nprevious_master_key_file = "keys/missing.key"\n')
    result = subprocess.run([sys.executable, "-m", "mta", "--config", str(config), "check-config"],
                            capture_output=True, text=True, cwd=REPOSITORY, timeout=30)
    assert result.returncode == 2
    assert "storage.previous_master_key_file: cannot read master key file" in result.stderr
