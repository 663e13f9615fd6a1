"""Listener settings: IPv6 addresses, limits per listener, and the EHLO keywords that state them."""

from __future__ import annotations

import pytest

from mta.config import ConfigError, load
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
    path = tmp_path / "mta.toml"
    path.write_text("[smtp.submission]\nmax_recipients = 50\n")

    with pytest.raises(ConfigError, match="smtp.submission.max_recipients must be 0 or between 100 and 100000, got 50"):
        load(path)


def test_two_listeners_on_one_port_refused(tmp_path):
    path = tmp_path / "mta.toml"
    path.write_text("[smtp.submission]\nport = 2525\n")

    with pytest.raises(ConfigError, match="smtp.submission and smtp.mx both listen on 127.0.0.1:2525"):
        load(path)
