"""Warm-up of a new source address: daily caps per site, overflow to warm addresses, deferral, throttling hold."""

from __future__ import annotations

from collections import deque
from datetime import datetime, timezone

from tests.conftest import config_error, query
from tests.mx import RELAY_DOMAIN, relay_config, send_mx, wait_until

TODAY = datetime.now(timezone.utc).date().isoformat()


def warmup_config(sink_port: int, pool: list[str], schedule: list[int]) -> dict:
    config = relay_config(sink_port, retry_schedule=[60.0])
    config["delivery"] |= {
        "source_addresses": [],
        "source": {"addresses": {"127.0.0.3": "out1.example.com", "127.0.0.4": "new.example.com"},
                   "pools": {"default": pool}},
        "warmup": {"schedule": schedule, "addresses": {"127.0.0.4": TODAY}},
    }
    return config


def send_many(mta, count: int) -> None:
    for number in range(count):
        assert send_mx(mta, "sender@example.net", f"user{number}@{RELAY_DOMAIN}")[0] == 250


def test_excess_moves_to_warm_address(make_mta, sink, sink_port):
    mta = make_mta(warmup_config(sink_port, ["127.0.0.4", "127.0.0.3"], [2, 10]))

    send_many(mta, 5)

    arrived = sink.wait_for(5)
    assert sorted(message.peer for message in arrived) == ["127.0.0.3"] * 3 + ["127.0.0.4"] * 2
    counts = query(mta.database_url, "SELECT address, sent FROM warmup_count")
    assert [tuple(row) for row in counts] == [("127.0.0.4", 2)]


def test_cap_reached_without_warm_address_defers(make_mta, sink, sink_port):
    mta = make_mta(warmup_config(sink_port, ["127.0.0.4"], [1, 10]))

    send_many(mta, 2)

    assert len(sink.wait_for(1)) == 1
    assert wait_until(lambda: "status=deferred (451 4.7.0 warm-up: every address of source pool default" in mta.log())
    assert len(sink.messages) == 1


def test_throttling_holds_the_ramp(make_mta, sink, sink_port):
    mta = make_mta(warmup_config(sink_port, ["127.0.0.4"], [5, 10]))
    sink.script.rcpt_replies = deque(["421 4.7.0 Try again later, closing connection"])

    send_many(mta, 1)

    assert wait_until(lambda: query(mta.database_url, "SELECT address FROM warmup_hold"))
    assert [row["address"] for row in query(mta.database_url, "SELECT address FROM warmup_hold")] == ["127.0.0.4"]


def test_undeclared_warmup_address_refused(tmp_path):
    message = config_error(tmp_path, '[delivery.warmup.addresses]\n"127.0.0.9" = "2026-12-01"\n')

    assert "delivery.warmup.addresses: 127.0.0.9 is not a declared source address" in message


def test_invalid_start_date_refused(tmp_path):
    message = config_error(tmp_path, '[delivery]\nsource_addresses = ["127.0.0.3"]\n'
                                     '[delivery.warmup.addresses]\n"127.0.0.3" = "yesterday"\n')

    assert "invalid date 'yesterday', expected YYYY-MM-DD" in message


def test_warming_address_of_other_family_unused(make_mta, sink, sink_port):
    config = warmup_config(sink_port, ["::1", "127.0.0.3"], [2, 10])
    config["delivery"]["source"]["addresses"]["::1"] = "new6.example.com"
    config["delivery"]["warmup"]["addresses"] = {"::1": TODAY}
    mta = make_mta(config)

    send_many(mta, 3)

    arrived = sink.wait_for(3)
    assert sorted(message.peer for message in arrived) == ["127.0.0.3"] * 3
    assert query(mta.database_url, "SELECT address, sent FROM warmup_count") == []
