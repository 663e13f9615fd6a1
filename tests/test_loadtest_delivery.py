"""The delivery benchmark at a tiny size: every message arrives once, and reuse opens fewer connections."""

from __future__ import annotations

import json

import pytest

from loadtest.delivery_bench import Options, database_url, parse_arguments, run_benchmark
from loadtest.delivery_report import summarize, write_results

MESSAGES = 30


async def test_delivery_benchmark_counts_and_reuse(tmp_path):
    options = Options(messages=MESSAGES, sites=(3,), repeat=1, timeout=60.0, output=tmp_path)

    results = await run_benchmark(options)

    assert [(result.sites, result.reuse) for result in results] == [(3, "on"), (3, "off")]
    for result in results:
        assert result.ok, result.failures
        assert result.arrived == MESSAGES
        assert result.transactions == MESSAGES
        assert result.missing == 0
        assert result.duplicates == 0
        assert result.altered == 0
        assert result.events == {"delivered": MESSAGES}
        assert result.messages_per_second > 0
        assert result.mta_cpu_seconds is not None
    on, off = results
    assert off.connections == MESSAGES
    assert 3 <= on.connections < off.connections

    summary = summarize(results)
    assert summary["settings"]["3/on"]["connections"] == on.connections
    assert summary["reuse_on_to_off"]["3"]["messages_per_second"] is not None
    path = write_results(options, [], results, summary)
    assert len(json.loads(path.read_text())["runs"]) == 2


def test_database_url_replaces_name():
    url = "postgresql://postgres:@/postgres?host=/tmp/pg"

    assert database_url(url, "delivery_bench_1") == "postgresql://postgres:@/delivery_bench_1?host=/tmp/pg"


@pytest.mark.parametrize("arguments", [
    ["--messages", "20001"],
    ["--sites", "0"],
    ["--sites", "1,x"],
    ["--reuse", "maybe"],
    ["--repeat", "11"],
])
def test_arguments_out_of_bounds(arguments):
    with pytest.raises(SystemExit):
        parse_arguments(arguments)


def test_arguments_parse_settings():
    options = parse_arguments(["--sites", "1,10", "--reuse", "off", "--messages", "100"])

    assert options.sites == (1, 10)
    assert [reuse.name for reuse in options.reuse] == ["off"]
    assert options.reuse[0].cache_seconds == 0
    assert options.messages == 100
