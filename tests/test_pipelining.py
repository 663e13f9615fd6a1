"""The SMTP client's command pipelining (RFC 2920) against scripted servers on loopback.

Each server reads the whole group (MAIL, the RCPTs, DATA) before it replies,
so a client that waited for each reply would time out. The tests run under
uvloop, as the MTA does. Replies that arrive in separate packets are covered
by the delivery tests against aiosmtpd sinks.
"""

from __future__ import annotations

import asyncio

import uvloop

from mta.delivery.body import MessageBody
from mta.delivery.smtp import CrlfSMTP, Transaction

BODY = MessageBody.whole(b"Subject: pipelined\r\n\r\nhello\r\n")


async def serve(group_replies: list[bytes], recipients: int, after_group=None):
    """Start a server that replies to each group with group_replies in one write, then reads the body after a 354."""
    received: list[bytes] = []

    async def handle(reader, writer):
        writer.write(b"220 scripted\r\n")
        while line := await reader.readline():
            if line.startswith(b"EHLO"):
                writer.write(b"250-scripted\r\n250 PIPELINING\r\n")
            elif line.startswith(b"MAIL"):
                for _ in range(recipients + 1):
                    await reader.readline()
                if after_group == "close":
                    writer.write(group_replies[0])
                    await writer.drain()
                    writer.close()
                    return
                writer.write(b"".join(group_replies))
                if group_replies[-1].startswith(b"354"):
                    data = b""
                    while (chunk := await reader.readline()) != b".\r\n":
                        data += chunk
                    received.append(data)
                    writer.write(b"250 2.0.0 stored\r\n" if data else b"554 5.5.1 no valid recipients\r\n")
            elif line.startswith(b"RSET"):
                writer.write(b"250 2.0.0 reset\r\n")
            elif line.startswith(b"QUIT"):
                writer.write(b"221 bye\r\n")
                return

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, received


async def run_transactions(port: int, recipients: list[str], count: int) -> list[Transaction]:
    client = CrlfSMTP(hostname="127.0.0.1", port=port, timeout=5, start_tls=False)
    await client.connect()
    await client._ehlo_or_helo_if_needed()
    transactions = []
    for _ in range(count):
        transaction = Transaction("scripted", recipients)
        await asyncio.wait_for(transaction.run(client, "sender@example.net", BODY, 5), 10)
        transactions.append(transaction)
    client.close()
    return transactions


def run(group_replies: list[bytes], recipients: list[str], count: int = 1, after_group=None):
    async def scenario():
        server, received = await serve(group_replies, len(recipients), after_group)
        try:
            port = server.sockets[0].getsockname()[1]
            return await run_transactions(port, recipients, count), received
        finally:
            server.close()

    return uvloop.run(scenario())


def test_group_replies_in_one_packet():
    transactions, received = run([b"250 2.1.0 ok\r\n", b"250 2.1.5 ok\r\n", b"354 go ahead\r\n"],
                                 ["a@d.example"], count=3)

    assert len(received) == 3
    for transaction in transactions:
        assert [reply.code for _, reply in transaction.outcome.delivered] == [250]
        assert transaction.clean


def test_refused_mail_fails_every_recipient():
    transactions, received = run([b"550 5.7.1 sender refused\r\n", b"503 5.5.1 no MAIL\r\n",
                                  b"503 5.5.1 no MAIL\r\n", b"503 5.5.1 no RCPT\r\n"], ["a@d.example", "b@d.example"])

    outcome = transactions[0].outcome
    assert [reply.code for _, reply in outcome.failed] == [550, 550]
    assert received == []
    assert transactions[0].clean


def test_data_accepted_without_recipients_gets_empty_message():
    transactions, received = run([b"250 2.1.0 ok\r\n", b"550 5.1.1 no such user\r\n", b"354 go ahead\r\n"],
                                 ["a@d.example"])

    outcome = transactions[0].outcome
    assert [reply.text for _, reply in outcome.failed] == ["5.1.1 no such user"]
    assert outcome.delivered == []
    assert received == [b""]


def test_some_recipients_refused():
    transactions, received = run([b"250 2.1.0 ok\r\n", b"250 2.1.5 ok\r\n", b"550 5.1.1 no such user\r\n",
                                  b"354 go ahead\r\n"], ["a@d.example", "b@d.example"])

    outcome = transactions[0].outcome
    assert [recipient for recipient, _ in outcome.delivered] == ["a@d.example"]
    assert [recipient for recipient, _ in outcome.failed] == ["b@d.example"]
    assert len(received) == 1


def test_connection_lost_mid_group_defers():
    transactions, received = run([b"250 2.1.0 ok\r\n"], ["a@d.example"], after_group="close")

    outcome = transactions[0].outcome
    assert [reply.enhanced for _, reply in outcome.deferred] == ["4.4.2"]
    assert outcome.delivered == []
    assert not transactions[0].clean
