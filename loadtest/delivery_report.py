"""The delivery benchmark's medians, reuse ratios, table and JSON file."""

from __future__ import annotations

import json
import os
import platform
import statistics
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from loadtest.delivery_bench import Options, RunResult


def _median(values: list[float | None], digits: int) -> float | None:
    present = [value for value in values if value is not None]
    return round(statistics.median(present), digits) if present else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 2)


def summarize(results: list[RunResult]) -> dict:
    """Return the medians of the successful runs per (sites, reuse), and the ratios reuse on / off per site count."""
    settings: dict[str, dict] = {}
    for sites, reuse in dict.fromkeys((result.sites, result.reuse) for result in results):
        runs = [result for result in results if (result.sites, result.reuse) == (sites, reuse) and result.ok]
        settings[f"{sites}/{reuse}"] = {
            "sites": sites, "reuse": reuse, "runs": len(runs),
            "messages_per_second": _median([run.messages_per_second for run in runs], 1),
            "mta_cpu_ms_per_message": _median([_per_message_ms(run.mta_cpu_seconds, run) for run in runs], 3),
            "postgres_cpu_ms_per_message": _median([_per_message_ms(run.postgres_cpu_seconds, run) for run in runs],
                                                   3),
            "connections": _median([run.connections for run in runs], 0),
            "other_cpu_seconds": _median([run.other_cpu_seconds for run in runs], 2),
        }

    ratios = {}
    for sites in dict.fromkeys(result.sites for result in results):
        on, off = settings.get(f"{sites}/on"), settings.get(f"{sites}/off")
        if on and off:
            ratios[str(sites)] = {
                "messages_per_second": _ratio(on["messages_per_second"], off["messages_per_second"]),
                "mta_cpu_ms_per_message": _ratio(on["mta_cpu_ms_per_message"], off["mta_cpu_ms_per_message"]),
            }
    return {"settings": settings, "reuse_on_to_off": ratios, "this_to_before": _before_ratios(settings)}


def _before_ratios(settings: dict[str, dict]) -> dict[str, dict]:
    """Return this checkout's figures over the --before-tree checkout's, per site count and reuse setting."""
    ratios = {}
    for key, before in settings.items():
        if not key.endswith("-before"):
            continue
        this = settings.get(key.removesuffix("-before"))
        if this:
            ratios[key.removesuffix("-before")] = {
                "messages_per_second": _ratio(this["messages_per_second"], before["messages_per_second"]),
                "mta_cpu_ms_per_message": _ratio(this["mta_cpu_ms_per_message"], before["mta_cpu_ms_per_message"]),
            }
    return ratios


def _per_message_ms(seconds: float | None, run: RunResult) -> float | None:
    return None if seconds is None else seconds * 1000 / run.messages


def print_table(summary: dict) -> None:
    print(f"\n{'sites':>5} {'reuse':>10} {'runs':>4} {'msg/s':>9} {'MTA CPU ms/msg':>15} {'PG CPU ms/msg':>14}"
          f" {'connections':>11} {'other CPU s':>11}")
    for row in summary["settings"].values():
        print(f"{row['sites']:>5} {row['reuse']:>10} {row['runs']:>4} {_text(row['messages_per_second']):>9}"
              f" {_text(row['mta_cpu_ms_per_message']):>15} {_text(row['postgres_cpu_ms_per_message']):>14}"
              f" {_text(row['connections']):>11} {_text(row['other_cpu_seconds']):>11}")
    if summary["reuse_on_to_off"]:
        print(f"\n{'sites':>5} {'msg/s on/off':>13} {'MTA CPU on/off':>15}")
        for sites, ratio in summary["reuse_on_to_off"].items():
            print(f"{sites:>5} {_text(ratio['messages_per_second']):>13} {_text(ratio['mta_cpu_ms_per_message']):>15}")
    if summary["this_to_before"]:
        print(f"\n{'sites/reuse':>11} {'msg/s this/before':>18} {'MTA CPU this/before':>20}")
        for key, ratio in summary["this_to_before"].items():
            print(f"{key:>11} {_text(ratio['messages_per_second']):>18} {_text(ratio['mta_cpu_ms_per_message']):>20}")


def _text(value: float | None) -> str:
    return "-" if value is None else str(value)


def describe_machine() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpus": len(os.sched_getaffinity(0)), "cpu_model": model,
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version()}


def write_results(options: Options, argv: list[str], results: list[RunResult], summary: dict) -> Path:
    """Write every run, the machine and the summary as JSON under options.output, and return the file's path."""
    finished = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    options.output.mkdir(parents=True, exist_ok=True)
    path = options.output / f"delivery-{finished}.json"
    described = asdict(options) | {"output": str(options.output),
                                   "before_tree": str(options.before_tree) if options.before_tree else None}
    path.write_text(json.dumps({
        "date": finished,
        "command": ["python", "-m", "loadtest", "delivery", *argv],
        "machine": describe_machine(),
        "options": described,
        "runs": [asdict(result) | {"ok": result.ok} for result in results],
        "summary": summary,
    }, indent=2) + "\n")
    return path
