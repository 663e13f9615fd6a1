"""Dead-site detection: a site that refuses connections is suspended for every node, then tried again."""

from __future__ import annotations

from tests.conftest import REMOTE_MX_ADDRESS, query
from tests.mx import RELAY_DOMAIN, relay_config, send_mx, wait_until
from tests.pgcluster import free_port
from tests.sink import sink_on

SUSPEND_SECONDS = 3.0


def test_dead_site_suspended_then_resumed(make_mta):
    port = free_port(REMOTE_MX_ADDRESS)  # nothing listens here until the end
    site = f"{REMOTE_MX_ADDRESS}:{port}"
    mta = make_mta(relay_config(port, retry_schedule=[1.0], connect_timeout=2.0,
                                sites={"dead_after_failures": 2, "suspend_seconds": SUSPEND_SECONDS}))

    for number in range(2):
        code, text = send_mx(mta, "sender@example.net", f"user{number}@{RELAY_DOMAIN}")
        assert code == 250, text
    assert wait_until(lambda: f"site {site} suspended for 3 s after 2 failed connections" in mta.log())
    rows = query(mta.database_url, "SELECT suspended_until > now() AS suspended, last_reply FROM site"
                                   " WHERE key = $1", site)
    assert rows[0]["suspended"]
    assert "4.4.1 connection to" in rows[0]["last_reply"]

    # A message for the suspended site is deferred without a connection attempt.
    code, text = send_mx(mta, "sender@example.net", f"user2@{RELAY_DOMAIN}")
    assert code == 250, text
    assert wait_until(lambda: f"(451 4.4.1 site {site} suspended for" in mta.log())

    with sink_on(REMOTE_MX_ADDRESS, port) as sink:
        arrived = sink.wait_for(3, timeout=30)
    assert sorted(message.recipients[0] for message in arrived) == [f"user{n}@{RELAY_DOMAIN}" for n in range(3)]
