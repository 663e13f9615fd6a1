"""Listener settings: IPv6 addresses, limits per listener, and the EHLO keywords that state them."""

from __future__ import annotations

import pytest

from tests.conftest import config_error
from tests.smtpclient import RawClient


def test_ipv6_listener_with_own_size_limit(make_mta):
    mta = make_mta({"smtp": {"mx": {"address": "::1", "max_message_size": 2048, "max_recipients": 100}}})
    mta.cli("user", "add", "alice@example.com", "--password-stdin", input_text="a password\n")

    with RawClient(mta.mx_port, host="::1") as client:
        keywords = client.ehlo()
        assert "SIZE" in keywords
        assert "ENHANCEDSTATUSCODES" in keywords
        assert client.command("EHLO client.example.net")[1].split("\n").count("SIZE 2048") == 1

        assert client.command("MAIL FROM:<sender@example.net>")[0] == 250
        assert client.command("RCPT TO:<alice@example.com>")[0] == 250
        code, text = client.data(b"Subject: big\r\n\r\n" + b"x" * 3000 + b"\r\n.\r\n")
        assert (code, text) == (552, "5.3.4 message exceeds the size limit of 2048 octets")

    assert "connect from [::1]" in mta.log()


def test_other_listeners_keep_smtp_limit(make_mta):
    mta = make_mta({"smtp": {"max_message_size": 4096, "mx": {"max_message_size": 2048}}})

    with RawClient(mta.submission_port) as client:
        client.ehlo()
        assert "SIZE 4096" in client.command("EHLO client.example.net")[1].split("\n")


def test_listener_limit_below_rfc_minimum_refused(tmp_path):
    message = config_error(tmp_path, "[smtp.submission]\nmax_recipients = 50\n")

    assert "smtp.submission.max_recipients must be 0 or between 100 and 100000, got 50" in message


@pytest.mark.parametrize("toml, message", [
    ("[smtp.submission]\nport = 2525\n",
     "smtp.submission on 127.0.0.1:2525 and smtp.mx on 127.0.0.1:2525 share a port"),
    ('[smtp.mx]\naddress = "0.0.0.0"\n[smtp.submission]\nport = 2525\n',
     "smtp.submission on 127.0.0.1:2525 and smtp.mx on 0.0.0.0:2525 share a port"),
])
def test_two_listeners_on_one_port_refused(tmp_path, toml, message):
    assert message in config_error(tmp_path, toml)


@pytest.mark.parametrize("toml, message", [
    ('[tls]\ncert_file = "/nonexistent/cert.pem"\nkey_file = "/nonexistent/key.pem"\n',
     "tls.cert_file not found: /nonexistent/cert.pem"),
    ('[tls]\ncert_file = "/nonexistent/cert.pem"\n', "tls.cert_file and tls.key_file go together"),
])
def test_missing_certificate_files_refused(tmp_path, toml, message):
    assert message in config_error(tmp_path, toml)


@pytest.mark.parametrize("toml, message", [
    ('[smtp]\nidle_timeout = 30.0\n[smtp.checks.scan]\nfactory = "tests.content_checks:SlowCheck"\ntimeout = 60.0\n',
     "smtp.checks.scan.timeout (60 s) must be shorter than smtp.idle_timeout (30 s)"),
    ("[smtp]\nidle_timeout = 5.0\ngreet_pause = 6.0\n", "smtp.greet_pause (6 s) must be shorter than smtp.idle_timeout (5 s)"),
])
def test_waits_longer_than_idle_timeout_refused(tmp_path, toml, message):
    assert message in config_error(tmp_path, toml)
