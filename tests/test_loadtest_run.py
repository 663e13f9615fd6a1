"""The load-test harness against the real MTA: a short run passes the loss check, a lossy sink fails it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from loadtest.faults import Fault
from loadtest.model import SizeDistribution, TrafficModel
from loadtest.run import RunOptions, run
from loadtest.sink import SinkBehaviour

SMALL_MODEL = TrafficModel(users=200)


async def test_short_run_passes_loss_check(tmp_path):
    options = RunOptions(mode="open", rate=60.0, duration=4.0, auth_users=20, drain_timeout=60.0,
                         output=tmp_path)

    summary = await run(SMALL_MODEL, options)

    assert summary["loss"]["passed"], summary["loss"]
    assert summary["offered"] >= 150
    assert summary["reply_codes"] == {"250": summary["offered"]}
    assert summary["arrived"] > 0
    assert summary["time_to_250_s"]["p50"] is not None
    result = tmp_path / summary["directory"].rsplit("/", 1)[1]
    assert (result / "result.json").stat().st_size > 0
    for name in ("throughput.png", "latency.png", "queue_depth.png"):
        assert (result / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_dropping_sink_fails_loss_check(tmp_path):
    model = replace(SMALL_MODEL, local_share=0.0)
    options = RunOptions(mode="closed", count=20, concurrency=4, auth_users=20, drain_timeout=5.0,
                         output=tmp_path, plots=False, behaviour=SinkBehaviour(drop_rate=1.0))

    summary = await run(model, options)

    assert not summary["loss"]["passed"]
    assert summary["loss"]["missing_count"] >= 1


async def test_attachments_survive_kill_node(tmp_path):
    model = replace(SMALL_MODEL, local_share=0.0,
                    size=SizeDistribution(attachment_share=0.3, attachment_max=300_000))
    options = RunOptions(mode="open", rate=20.0, duration=6.0, auth_users=20, drain_timeout=120.0,
                         output=tmp_path, plots=False, faults=[Fault.parse("kill-node@2")])

    summary = await run(model, options)

    assert summary["loss"]["passed"], summary["loss"]
    assert summary["accepted"] > 0


def test_fault_parse_rejects_unknown():
    with pytest.raises(ValueError, match="invalid fault"):
        Fault.parse("reboot@10")


def test_compare_relay_events_all_remote():
    from loadtest.compare import relay_events
    from loadtest.model import MX

    events = relay_events(SMALL_MODEL, 300, seed=3)

    assert len(events) == 300
    assert {event.kind for event in events} == {MX}
    for event in events:
        assert event.recipients
        assert all(r.rpartition("@")[2] in SMALL_MODEL.remote_domains for r in event.recipients)
        assert event.sender.rpartition("@")[2] in SMALL_MODEL.remote_domains


async def test_postgres_restart_and_store_outage(tmp_path):
    model = replace(SMALL_MODEL, local_share=0.0,
                    size=SizeDistribution(attachment_share=0.3, attachment_max=300_000))
    options = RunOptions(mode="open", rate=20.0, duration=8.0, auth_users=20, drain_timeout=120.0,
                         output=tmp_path, plots=False,
                         faults=[Fault.parse("restart-postgres@2"), Fault.parse("store-outage@4+2")])

    summary = await run(model, options)

    # Messages refused during the faults (451 or no reply) were never accepted;
    # every accepted one must still arrive.
    assert summary["loss"]["passed"], summary["loss"]
    assert summary["accepted"] > 0
    assert set(summary["reply_codes"]) <= {"250", "451", "none"}
