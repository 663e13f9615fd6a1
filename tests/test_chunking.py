"""BDAT (RFC 3030): chunked message data, pipelined, refused, oversize, and mixed with DATA."""

from __future__ import annotations

from tests.conftest import query
from tests.smtpclient import RawClient

MESSAGE = b"From: sender@example.net\r\nTo: alice@example.com\r\nSubject: chunks\r\n\r\n.leading dot\r\nbody\r\n"


def stored_count(mta) -> int:
    return query(mta.database_url, "SELECT count(*) AS n FROM message")[0]["n"]


def start(client: RawClient) -> None:
    assert "CHUNKING" in client.ehlo()
    assert client.command("MAIL FROM:<sender@example.net>")[0] == 250
    assert client.command("RCPT TO:<alice@example.com>")[0] == 250


def test_chunks_make_one_message(shared_mta):
    before = stored_count(shared_mta)
    with RawClient(shared_mta.mx_port) as client:
        start(client)
        first, second = MESSAGE[:30], MESSAGE[30:]

        client.send(f"BDAT {len(first)}\r\n".encode() + first)
        assert client.reply() == (250, f"2.0.0 {len(first)} octets received")
        client.send(f"BDAT {len(second)} LAST\r\n".encode() + second)
        code, text = client.reply()

    assert code == 250
    assert text.startswith("2.0.0 OK queued as ")
    assert stored_count(shared_mta) == before + 1


def test_pipelined_chunks_and_next_transaction(shared_mta):
    with RawClient(shared_mta.mx_port) as client:
        start(client)
        # Everything in one write: the chunk sizes alone separate data from commands.
        client.send(b"BDAT 10\r\n" + MESSAGE[:10] + f"BDAT {len(MESSAGE) - 10} LAST\r\n".encode() + MESSAGE[10:]
                    + b"MAIL FROM:<sender@example.net>\r\nRCPT TO:<alice@example.com>\r\nBDAT 0 LAST\r\n")

        assert client.reply()[0] == 250
        assert client.reply()[1].startswith("2.0.0 OK queued as ")
        assert client.reply()[0] == 250
        assert client.reply()[0] == 250
        # BDAT 0 LAST ends a message whose earlier chunks were all there was: here, none.
        assert client.reply()[1].startswith("2.0.0 OK queued as ")


def test_chunk_without_recipient_is_read_and_refused(shared_mta):
    with RawClient(shared_mta.mx_port) as client:
        client.ehlo()
        client.send(b"BDAT 14 LAST\r\nNOOP\r\nNOOP\r\nxx")

        assert client.reply() == (503, "5.5.1 need RCPT command")
        # The chunk's octets were not taken for commands.
        assert client.command("NOOP") == (250, "2.0.0 OK")


def test_oversize_chunk_refused_then_transaction_over(shared_mta):
    limit = 1048576
    before = stored_count(shared_mta)
    with RawClient(shared_mta.mx_port) as client:
        start(client)
        client.send(f"BDAT {limit + 1}\r\n".encode() + b"x" * (limit + 1))
        assert client.reply() == (552, f"5.3.4 message exceeds the size limit of {limit} octets")

        client.send(b"BDAT 5 LAST\r\nhello")
        assert client.reply() == (503, "5.5.1 need RCPT command")
        assert client.command("QUIT")[0] == 221

    assert stored_count(shared_mta) == before


def test_data_after_bdat_refused(shared_mta):
    with RawClient(shared_mta.mx_port) as client:
        start(client)
        client.send(b"BDAT 5\r\nFrom:")
        assert client.reply()[0] == 250

        assert client.command("DATA") == (503, "5.5.1 DATA not allowed after BDAT in one transaction")


def test_bdat_without_size_closes_session(shared_mta):
    with RawClient(shared_mta.mx_port) as client:
        start(client)

        assert client.command("BDAT LAST") == (
            501, "5.5.4 Syntax: BDAT chunk-size [LAST]; closing, as the chunk cannot be found")
        assert client.unread(2.0) == b""


def test_bare_lf_in_chunk_rejected(shared_mta):
    data = b"From: sender@example.net\r\nSubject: lf\r\n\r\nbare\nline\r\n"
    with RawClient(shared_mta.mx_port) as client:
        start(client)
        client.send(f"BDAT {len(data)} LAST\r\n".encode() + data)

        assert client.reply()[0] == 550


def test_chunk_before_ehlo_refused(shared_mta):
    with RawClient(shared_mta.mx_port) as client:
        client.send(b"BDAT 4 LAST\r\nNOOP")

        assert client.reply() == (503, "5.5.1 send EHLO or HELO first")
        assert client.command("NOOP")[0] == 250
