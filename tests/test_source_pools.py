"""Source address pools: declared addresses with their EHLO names, chosen by sender or destination domain."""

from __future__ import annotations

import pytest

from mta.delivery.sources import SourceAddresses, SourcePool
from tests.conftest import config_error
from tests.mx import RELAY_DOMAIN, relay_config, send_mx, wait_until

SOURCE = {
    "addresses": {"127.0.0.3": "out1.example.com", "127.0.0.4": "out2.example.com"},
    "pools": {"default": ["127.0.0.3"], "marketing": ["127.0.0.4"]},
    "sender_rules": {"news.example.com": "marketing"},
    "tenants": {"acme": ["acme.example", "acme-mail.example"]},
    "tenant_rules": {"acme": "marketing"},
}


def pooled_config(sink_port: int) -> dict:
    config = relay_config(sink_port)
    # The test base configuration names one plain source address; pools replace it.
    config["delivery"] |= {"source_addresses": [], "source": SOURCE}
    return config


@pytest.mark.parametrize("sender, address, helo", [
    ("billing@example.net", "127.0.0.3", "out1.example.com"),
    ("offers@news.example.com", "127.0.0.4", "out2.example.com"),
    ("weekly@mail.news.example.com", "127.0.0.4", "out2.example.com"),
    ("invoices@acme-mail.example", "127.0.0.4", "out2.example.com"),
])
def test_pool_chosen_by_sender_domain(make_mta, sink, sink_port, sender, address, helo):
    mta = make_mta(pooled_config(sink_port))

    assert send_mx(mta, sender, f"user@{RELAY_DOMAIN}")[0] == 250

    assert wait_until(lambda: any(message.sender == sender for message in sink.messages))
    arrived = next(message for message in sink.messages if message.sender == sender)
    assert arrived.peer == address
    assert arrived.helo == helo


@pytest.mark.parametrize("toml, message", [
    ('[delivery.source.addresses]\n"127.0.0.3" = "out1.example.com"\n'
     '[delivery.source.pools]\ndefault = ["127.0.0.5"]\n',
     "delivery.source.pools.default: 127.0.0.5 is not a declared source address"),
    ('[delivery.source.addresses]\n"127.0.0.3" = "out1.example.com"\n'
     '[delivery.source.pools]\nbulk = ["127.0.0.3"]\n',
     "delivery.source.pools needs a pool named default"),
    ('[delivery.source.addresses]\n"127.0.0.3" = "out1.example.com"\n'
     '[delivery.source.pools]\ndefault = ["127.0.0.3"]\n[delivery.source.sender_rules]\n"a.example" = "bulk"\n',
     "delivery.source.sender_rules.a.example: unknown pool 'bulk'"),
    ('[delivery]\nsource_addresses = ["127.0.0.3"]\n[delivery.source.addresses]\n"127.0.0.3" = "out1.example.com"\n',
     "use either delivery.source_addresses or [delivery.source], not both"),
])
def test_bad_source_configuration_refused(tmp_path, toml, message):
    assert message in config_error(tmp_path, toml)


POOLS = '[delivery.source.addresses]\n"127.0.0.3" = "out1.example.com"\n[delivery.source.pools]\ndefault = ["127.0.0.3"]\n'


@pytest.mark.parametrize("toml, message", [
    (POOLS + '[delivery.source.tenants]\na = ["x.example"]\nb = ["X.example."]\n',
     "delivery.source.tenants: x.example belongs to both a and b"),
    (POOLS + '[delivery.source.tenant_rules]\nacme = "default"\n',
     "delivery.source.tenant_rules.acme: unknown tenant"),
    (POOLS + '[delivery.source.tenants]\nacme = ["acme.example"]\n[delivery.source.tenant_rules]\nacme = "bulk"\n',
     "delivery.source.tenant_rules.acme: unknown pool 'bulk'"),
])
def test_bad_tenant_configuration_refused(tmp_path, toml, message):
    assert message in config_error(tmp_path, toml)


def test_sender_rule_beats_tenant_rule():
    sources = SourceAddresses({"192.0.2.1": "a", "192.0.2.2": "b"}, {"default": ["192.0.2.1"], "bulk": ["192.0.2.2"]},
                              {"news.acme.example": "default"}, {}, "host", {"acme": ["acme.example"]},
                              {"acme": "bulk"})

    assert sources.pool_for("news.acme.example", "d.example").name == "default"
    assert sources.pool_for("shop.acme.example", "d.example").name == "bulk"
    assert sources.pool_for("other.example", "d.example").name == "default"


def test_narrowed_pool_rotates_addresses():
    sources = SourceAddresses({"192.0.2.1": "a", "192.0.2.2": "b"}, {"default": ["192.0.2.1", "192.0.2.2"]},
                              {}, {}, "host")
    narrowed = SourcePool("default", ("192.0.2.1", "192.0.2.2"))

    picked = {sources.pick(narrowed, "198.51.100.7") for _ in range(4)}

    assert picked == {"192.0.2.1", "192.0.2.2"}
