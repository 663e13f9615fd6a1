"""``python -m loadtest compare``: the model's relay workload against this MTA and Postfix.

Both relays receive the same messages (the model's sizes and attachments,
the same seed) on their MX port from trusted remote MTAs and relay them to
the same kind of sink, and both get the loss check. Submission is left out
because Postfix would need a SASL server to authenticate; what is compared
is receiving, queueing and relaying. Postfix runs as in the baseline
benchmark, with its message size limit raised to this MTA's (25 MiB) so
that attachments are accepted by both. With ``--sign`` both DKIM-sign every
message (this MTA for its relay network, Postfix through OpenDKIM), and a
few arrived messages per relay have their signature checked.

The run happens in a network namespace with loopback only (re-executed
under ``unshare -n`` unless ``--no-unshare``), as Postfix is involved.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from loadtest import baseline
from loadtest import model as traffic
from loadtest.clients import ClientPool, ClientSettings
from loadtest.messages import build_message, unique_id
from loadtest.results import Sent, content_digest, summarize, write_json
from loadtest.signing import SELECTOR, SIGNING_DOMAIN, SigningError, check_signature, write_key
from loadtest.sink import LoadSink
from loadtest.target import LOOPBACK, MtaUnderTest

RESULTS_DIR = baseline.RESULTS_DIR
MESSAGE_SIZE_LIMIT = 25 * 1024 * 1024


# Arrived messages whose signature is checked in a run with --sign.
SIGNATURE_SAMPLES = 5


class SizedPostfix(baseline.Postfix):
    """Postfix as in the baseline, accepting messages as large as this MTA does."""

    def write_config(self, sink_port: int) -> None:
        super().write_config(sink_port)
        with open(self.config_dir / "main.cf", "a") as main_cf:
            main_cf.write(f"message_size_limit = {MESSAGE_SIZE_LIMIT}\n")


def relay_events(model: traffic.TrafficModel, count: int, seed: int, sign: bool = False) -> list[traffic.Event]:
    """Return the model's messages as relay traffic: from outside, to remote recipients only.

    With sign, every message comes from the signing domain, as outbound
    mail of the organisation handed to its relay.
    """
    relay_model = replace(model, local_share=0.0)
    events = []
    for event in traffic.closed_loop_events(relay_model, count, seed):
        if event.kind == traffic.SUBMISSION:
            event = replace(event, kind=traffic.MX, sender=f"sender@{model.remote_domains[0]}")
        else:
            recipients = tuple(f"user{index}@{model.remote_domains[index % len(model.remote_domains)]}"
                               for index, _ in enumerate(event.recipients))
            event = replace(event, recipients=recipients)
        if sign:
            event = replace(event, sender=f"{event.sender.partition('@')[0]}@{SIGNING_DOMAIN}")
        events.append(event)
    return events


async def drive(events: list[traffic.Event], port: int, sessions: int, seed: int, run: str) -> tuple[list[Sent], float]:
    pool = ClientPool(ClientSettings(host=LOOPBACK, mx_port=port, submission_port=port, max_sessions=sessions,
                                     mx_starttls=False), password_for=lambda _: "")
    rng = random.Random(seed)
    sent: list[Sent] = []
    queue = iter(enumerate(events))

    async def session() -> None:
        for number, event in queue:
            message = build_message(event, unique_id(run, number), rng)
            record = Sent(loadtest_id=unique_id(run, number), kind=event.kind, offered_at=time.monotonic(),
                          replied_at=None, reply_code=None, sha256=content_digest(message),
                          remote_recipients=event.recipients)
            sent.append(record)
            outcome = await pool.send(event.kind, event.sender, list(event.recipients), message)
            record.replied_at, record.reply_code = outcome.replied_at, outcome.code

    started = time.monotonic()
    await asyncio.gather(*(session() for _ in range(sessions)))
    await pool.close()
    return sent, time.monotonic() - started


async def drain(sent: list[Sent], sink: LoadSink, timeout: float) -> float:
    expected = sum(len(record.remote_recipients) for record in sent if record.reply_code == 250)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(len(arrival.recipients) for arrival in sink.arrivals) >= expected:
            break
        await asyncio.sleep(0.2)
    return time.monotonic()


async def run_relay(kind: str, events: list[traffic.Event], model: traffic.TrafficModel,
                    args: argparse.Namespace, directory: Path) -> dict:
    sink = LoadSink([LOOPBACK], 0, sample_count=SIGNATURE_SAMPLES if args.sign else 0)
    await sink.start()
    if kind in ("mta", "before"):
        routes = {domain: f"{LOOPBACK}:{sink.port}" for domain in model.remote_domains}
        signing = {"relay_networks": (f"{LOOPBACK}/32",), "dkim_selector": SELECTOR} if args.sign else {}
        # The signing domain is local so that this MTA loads (and here finds) its key.
        local_domains = (*model.remote_domains[1:], SIGNING_DOMAIN) if args.sign else model.remote_domains[1:]
        relay = MtaUnderTest(args.workers, model.remote_domains[0], routes, users=1, auth_users=1,
                             extra_local_domains=local_domains, temp_root=directory,
                             tree=args.before_tree if kind == "before" else None, **signing)
        key_path = relay.directory / "var" / "dkim" / f"{SIGNING_DOMAIN}.{SELECTOR}.pem"
        port_of = lambda: relay.mx_port  # noqa: E731
        start = relay.start
    else:
        relay = SizedPostfix(Path(tempfile.mkdtemp(prefix="compare-postfix-", dir=directory)), args.sign)
        key_path = relay.signing_key_path
        port_of = lambda: relay.port  # noqa: E731
        start = lambda: relay.start(sink.port)  # noqa: E731
    key = write_key(key_path) if args.sign else None
    await asyncio.to_thread(start)

    try:
        started = time.monotonic()
        sent, sending = await drive(events, port_of(), args.sessions, args.seed, f"{kind}{args.seed}")
        arrived_at = await drain(sent, sink, args.drain_timeout)
    finally:
        await asyncio.to_thread(relay.stop)
        await sink.stop()

    summary = summarize(sent, sink.arrivals, [], sending)
    summary["relay"] = kind
    if key is not None:
        summary["signature_check"] = check_samples(sink.samples, key)
    summary["until_arrival_s"] = arrived_at - started
    # Messages (not per-domain copies) that reached the sink, over the time until the last did.
    summary["arrived_per_s_end_to_end"] = summary["loss"]["arrived"] / (arrived_at - started)
    return summary


def check_samples(samples: list[bytes], key) -> str:
    """Return "passed" when every sampled message carries a valid signature, else the first error."""
    if not samples:
        return "no message arrived to check"
    for message in samples:
        try:
            check_signature(message, key)
        except SigningError as error:
            return str(error)
    return "passed"


def print_comparison(summaries: dict[str, dict]) -> None:
    for other in [name for name in ("postfix", "before") if name in summaries]:
        print(f"\n{'':<28}{'mta':>12}{other:>12}{'ratio':>8}")
        for key, label in (("accepted_per_s", "accepted msg/s"), ("arrived_per_s_end_to_end", "arriving msg/s")):
            ours, theirs = summaries["mta"][key], summaries[other][key]
            print(f"{label:<28}{ours:>12.1f}{theirs:>12.1f}{ours / theirs if theirs else 0:>8.2f}")
        for name in ("p50", "p99"):
            ours, theirs = summaries["mta"]["time_to_250_s"][name], summaries[other]["time_to_250_s"][name]
            print(f"{'time to 250 ' + name + ' (s)':<28}{ours:>12.3f}{theirs:>12.3f}")
    for relay in summaries:
        loss = summaries[relay]["loss"]
        print(f"{relay}: loss check {'passed' if loss['passed'] else 'FAILED'} "
              f"(missing {loss['missing_count']}, duplicates {loss['duplicate_count']}), "
              f"reply codes {summaries[relay]['reply_codes']}")
        if "signature_check" in summaries[relay]:
            print(f"{relay}: DKIM signature check of {SIGNATURE_SAMPLES} arrived messages: "
                  f"{summaries[relay]['signature_check']}")


async def compare(args: argparse.Namespace) -> dict:
    model = traffic.TrafficModel(users=args.users)
    if args.attachment_share is not None:
        model = replace(model, size=replace(model.size, attachment_share=args.attachment_share))
    events = relay_events(model, args.count, args.seed, args.sign)
    directory = Path(tempfile.mkdtemp(prefix="loadtest-compare-"))
    try:
        kinds = ("before", "mta", "postfix") if args.before_tree else ("mta", "postfix")
        summaries = {kind: await run_relay(kind, events, model, args, directory) for kind in kinds}
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print_comparison(summaries)
    return summaries


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000, help="messages per relay (default %(default)s)")
    parser.add_argument("--sessions", type=int, default=20, help="parallel sessions (default %(default)s)")
    parser.add_argument("--users", type=int, default=50_000, help="users of the model (default %(default)s)")
    parser.add_argument("--attachment-share", type=float, default=None, help="share of messages with attachments")
    parser.add_argument("--workers", type=int, default=1, help="worker processes of this MTA")
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="seconds to wait for arrivals")
    parser.add_argument("--before-tree", type=Path, metavar="DIR",
                        help="also run this MTA from another checkout (a git worktree of an earlier commit)"
                             " and print the ratios mta/before")
    parser.add_argument("--sign", action="store_true",
                        help="both relays DKIM-sign all mail from one domain with one RSA-2048 key: this MTA "
                             "for its relay network, Postfix through OpenDKIM")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-unshare", action="store_true", help="already in a loopback-only namespace")
    args = parser.parse_args(argv)
    if args.before_tree is not None:
        args.before_tree = args.before_tree.resolve()
        if not (args.before_tree / "mta").is_dir():
            parser.error(f"--before-tree {args.before_tree} has no mta package")

    if not args.no_unshare:
        if os.geteuid() != 0:
            print("loadtest compare: run as root: it needs unshare -n and starts Postfix", file=sys.stderr)
            return 2
        ip = shutil.which("ip") or "/usr/sbin/ip"
        os.chdir(baseline.REPOSITORY)
        os.execvp("unshare", ["unshare", "-n", "--", "sh", "-c", f'{ip} link set lo up && exec "$@"', "sh",
                              sys.executable, "-m", "loadtest", "compare", *argv, "--no-unshare"])
    if not baseline.only_loopback():
        print("loadtest compare: this namespace has interfaces other than lo", file=sys.stderr)
        return 2

    summaries = asyncio.run(compare(args))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"compare-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    options = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    write_json(path, {"summaries": summaries}, [], options)
    print(f"results written to {path}")
    return 0 if all(summary["loss"]["passed"] and summary.get("signature_check", "passed") == "passed"
                    for summary in summaries.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
