"""``python -m loadtest``: load-test the MTA with a model of N users.

    python -m loadtest run --mode peak-hour --users 50000 --time-scale 0.05
    python -m loadtest run --mode open --rate 100 --duration 60
    python -m loadtest run --mode day --minutes 30 --users 5000
    python -m loadtest run --mode closed --concurrency 50 --count 20000
    python -m loadtest compare --count 5000    # the model's relay mix, this MTA and Postfix
    python -m loadtest baseline ...      # smtp-source against this MTA and Postfix
    python -m loadtest sign-bench ...    # DKIM signing rate
    python -m loadtest queue-bench ...   # the queue alone: enqueue, claim, settle
    python -m loadtest delivery ...      # the delivery side alone: a pre-filled queue drained to sinks

Every target is on loopback: the harness starts the MTA and the sink itself.
Exit status: 0 when the loss check passed, 1 when it failed, 2 for bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

MODES = ("open", "peak-hour", "day", "closed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description="Load-test the MTA on loopback.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="run a load model against a fresh MTA and check for loss")

    traffic = run.add_argument_group("traffic model")
    traffic.add_argument("--users", type=int, default=50_000, help="mailboxes (default %(default)s)")
    traffic.add_argument("--sent-per-user", type=float, default=30.0,
                         help="messages each user submits per day (default %(default)s)")
    traffic.add_argument("--received-per-user", type=float, default=80.0,
                         help="messages each user receives from outside per day (default %(default)s)")
    traffic.add_argument("--peak-hour-factor", type=float, default=None,
                         help="busiest hour's rate as a multiple of the average hour (default: the curve's own)")
    traffic.add_argument("--attachment-share", type=float, default=None,
                         help="share of messages with attachments of 100 KB to 10 MB (default: the model's)")
    traffic.add_argument("--local-share", type=float, default=None,
                         help="share of submitted mail's recipients that are local (default: the model's)")

    mode = run.add_argument_group("mode")
    mode.add_argument("--mode", choices=MODES, default="open", help="load shape (default %(default)s)")
    mode.add_argument("--rate", type=float, default=50.0, help="open: messages per second (default %(default)s)")
    mode.add_argument("--duration", type=float, default=30.0, help="open: seconds (default %(default)s)")
    mode.add_argument("--time-scale", type=float, default=1.0,
                      help="peak-hour: 0.1 sends the hour in 360 s at 10 times the rate (default %(default)s)")
    mode.add_argument("--minutes", type=float, default=10.0, help="day: minutes the day is squeezed into")
    mode.add_argument("--concurrency", type=int, default=20, help="closed: parallel sessions")
    mode.add_argument("--count", type=int, default=1000, help="closed: messages")
    mode.add_argument("--max-messages", type=int, default=1_000_000,
                      help="hard bound on messages in any mode (default %(default)s)")

    mta = run.add_argument_group("MTA and clients")
    mta.add_argument("--workers", type=int, default=1, help="MTA worker processes")
    mta.add_argument("--auth-users", type=int, default=200,
                     help="accounts that log in on submission; senders are mapped onto them (default %(default)s)")
    mta.add_argument("--max-sessions", type=int, default=50, help="open client sessions at most")
    mta.add_argument("--messages-per-connection", type=int, default=10, help="connection reuse")
    mta.add_argument("--drain-timeout", type=float, default=300.0,
                     help="seconds to wait after sending for every accepted message to arrive")

    sink = run.add_argument_group("sink (the remote MX hosts)")
    sink.add_argument("--sink-latency", type=float, default=0.0, help="seconds before each reply")
    sink.add_argument("--sink-tempfail", type=float, default=0.0, help="share of 451 replies at end of data")
    sink.add_argument("--sink-permfail", type=float, default=0.0, help="share of 550 replies per recipient")
    sink.add_argument("--sink-disconnect", type=float, default=0.0,
                      help="share of connections closed after the final dot without a reply")

    run.add_argument("--fault", action="append", default=[], metavar="KIND@SECONDS[+DURATION]",
                     help="kill-node@10, restart-postgres@20, store-outage@15+10 (repeatable)")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--output", type=Path, default=Path("loadtest/results"), help="where result folders go")
    run.add_argument("--no-plots", action="store_true", help="skip the PNG plots")

    commands.add_parser("baseline", help="smtp-source against this MTA and Postfix (see --help there)",
                        add_help=False)
    commands.add_parser("compare", help="the model's relay workload against this MTA and Postfix (see --help there)",
                        add_help=False)
    commands.add_parser("sign-bench", help="DKIM signing rate (see --help there)", add_help=False)
    commands.add_parser("queue-bench", help="the queue alone, without SMTP (see --help there)", add_help=False)
    commands.add_parser("delivery", help="the delivery side alone, draining a pre-filled queue (see --help there)",
                        add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["baseline"]:
        from loadtest import baseline
        return baseline.main(argv[1:])
    if argv[:1] == ["compare"]:
        from loadtest import compare
        return compare.main(argv[1:])
    if argv[:1] == ["sign-bench"]:
        from loadtest import sign_bench
        return sign_bench.main(argv[1:])
    if argv[:1] == ["queue-bench"]:
        from loadtest import queue_bench
        return queue_bench.main(argv[1:])
    if argv[:1] == ["delivery"]:
        from loadtest import delivery_bench
        return delivery_bench.main(argv[1:])

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "run":
        parser.print_help()
        return 2

    try:
        model, options = configure(args)
    except ValueError as error:
        print(f"loadtest: {error}", file=sys.stderr)
        return 2

    summary = asyncio.run(_run(model, options))
    print_summary(summary)
    return 0 if summary["loss"]["passed"] else 1


async def _run(model, options):
    from loadtest.run import run
    return await run(model, options)


def configure(args: argparse.Namespace):
    from dataclasses import replace

    from loadtest.faults import Fault
    from loadtest.model import TrafficModel
    from loadtest.run import RunOptions
    from loadtest.sink import SinkBehaviour

    model = TrafficModel(users=args.users, sent_per_user_day=args.sent_per_user,
                         received_per_user_day=args.received_per_user, peak_hour_factor=args.peak_hour_factor)
    if args.local_share is not None:
        model = replace(model, local_share=args.local_share)
    if args.attachment_share is not None:
        model = replace(model, size=replace(model.size, attachment_share=args.attachment_share))
    model.validate()

    behaviour = SinkBehaviour(latency=args.sink_latency, tempfail_rate=args.sink_tempfail,
                              permfail_rate=args.sink_permfail, disconnect_after_data_rate=args.sink_disconnect,
                              seed=args.seed)
    options = RunOptions(
        mode=args.mode, rate=args.rate, duration=args.duration, time_scale=args.time_scale,
        minutes=args.minutes, concurrency=args.concurrency, count=args.count, max_messages=args.max_messages,
        workers=args.workers, auth_users=args.auth_users, max_sessions=args.max_sessions,
        messages_per_connection=args.messages_per_connection, drain_timeout=args.drain_timeout,
        seed=args.seed, output=args.output, behaviour=behaviour,
        faults=[Fault.parse(text) for text in args.fault], plots=not args.no_plots)
    if options.auth_users < 1 or options.auth_users > model.users:
        raise ValueError(f"--auth-users must be between 1 and --users ({model.users}), got {options.auth_users}")
    return model, options


def print_summary(summary: dict) -> None:
    import json

    print(json.dumps({key: value for key, value in summary.items() if key != "mta_log_tail"}, indent=2,
                     default=str))
    if summary.get("mta_log_tail"):
        print("last lines of the MTA's log:\n" + summary["mta_log_tail"])


if __name__ == "__main__":
    sys.exit(main())
