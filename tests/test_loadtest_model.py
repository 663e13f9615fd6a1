"""Tests of the load-test traffic model, its generators and the message builder.

Counts from the generators are random, so each statistical tolerance below
is at least 3.5 standard deviations wide, and fixed seeds keep the results
repeatable.
"""

from __future__ import annotations

import base64
import dataclasses
import email
import email.policy
import itertools
import math
import random
import statistics
import time
from collections import Counter
from datetime import UTC, datetime

import pytest

from loadtest.messages import build_message, unique_id
from loadtest.model import (
    MX,
    SUBMISSION,
    Event,
    SizeDistribution,
    TrafficModel,
    closed_loop_events,
    compressed_day,
    open_loop,
    peak_hour,
)

SMALL_MODEL = TrafficModel(users=500)


def hour_counts(events, hour_length: float) -> list[int]:
    counts = [0] * 24
    for event in events:
        counts[int(event.at // hour_length)] += 1
    return counts


# Model arithmetic


def test_daily_totals_equal_users_times_rates():
    model = TrafficModel(users=1234, sent_per_user_day=12.5, received_per_user_day=40.0)

    totals = model.daily_totals()

    assert totals == {"submission": 1234 * 12.5, "mx": 1234 * 40.0}


def test_default_model_figures():
    model = TrafficModel()
    model.validate()

    assert model.daily_totals() == {"submission": 1_500_000.0, "mx": 4_000_000.0}
    assert model.peak_hour() == 10
    assert sum(model.hour_shares()) == pytest.approx(1.0)


def test_hourly_rate_follows_curve():
    model = TrafficModel(users=1000)
    shares = model.hour_shares()
    daily = sum(model.daily_totals().values())

    for hour in range(24):
        assert model.hourly_rate(hour) == pytest.approx(daily * shares[hour] / 3600)
    assert model.hourly_rate(10.75) == model.hourly_rate(10)
    assert model.hourly_rate(24 + 3.5) == model.hourly_rate(3)
    assert sum(model.hourly_rate(hour) * 3600 for hour in range(24)) == pytest.approx(daily)


@pytest.mark.parametrize("factor", [1.0, 1.5, 2.0, 3.0, 6.0, 20.0])
def test_peak_hour_factor_reshapes_curve(factor):
    model = TrafficModel(peak_hour_factor=factor)
    shares = model.hour_shares()
    original = TrafficModel().hour_shares()

    assert max(shares) * 24 == pytest.approx(factor, rel=1e-9)
    assert sum(shares) == pytest.approx(1.0)
    assert min(shares) >= 0
    # The order of the hours stays that of the given curve.
    for a, b in itertools.combinations(range(24), 2):
        if original[a] < original[b]:
            assert shares[a] <= shares[b]
    if factor > 1:
        assert model.peak_hour() == 10


def test_peak_hour_factor_none_keeps_curve():
    weights = tuple(float(hour + 1) for hour in range(24))
    model = TrafficModel(hourly_weights=weights)

    shares = model.hour_shares()

    assert shares == pytest.approx([w / sum(weights) for w in weights])
    assert model.peak_hour() == 23


# Size distribution


def test_size_distribution_share_and_median():
    size = SizeDistribution()
    rng = random.Random(7)

    samples = [size.sample(rng) for _ in range(20_000)]
    bodies = [body for body, _ in samples]
    with_attachments = [attachments for _, attachments in samples if attachments]
    attachment_sizes = [a for attachments in with_attachments for a in attachments]

    assert len(with_attachments) / len(samples) == pytest.approx(0.02, abs=0.005)
    assert statistics.median(bodies) == pytest.approx(5_000, rel=0.05)
    assert min(bodies) >= size.body_min
    assert max(bodies) <= size.body_max
    assert all(1 <= len(attachments) <= 3 for attachments in with_attachments)
    assert min(attachment_sizes) >= 100_000
    assert max(attachment_sizes) <= 10_000_000
    # Log-uniform between 100 KB and 10 MB has its median at the geometric mean, 1 MB.
    assert statistics.median(attachment_sizes) == pytest.approx(1_000_000, rel=0.15)


def test_size_distribution_mean_matches_samples():
    size = SizeDistribution()
    rng = random.Random(11)

    samples = [size.sample(rng) for _ in range(20_000)]
    mean_body = statistics.fmean(body for body, _ in samples)
    mean_total = statistics.fmean(body + sum(attachments) for body, attachments in samples)

    assert mean_body == pytest.approx(size.mean_body_size(), rel=0.035)
    assert mean_total == pytest.approx(size.mean_size(), rel=0.12)


def test_size_distribution_fixed_body():
    size = SizeDistribution(body_median=3000, body_sigma=0.0, attachment_share=0.0)
    rng = random.Random(1)

    samples = {size.sample(rng)[0] for _ in range(100)}

    assert samples == {3000}
    assert size.mean_size() == 3000


# Generators


def test_compressed_day_matches_daily_totals():
    model = SMALL_MODEL
    expected = model.daily_totals()

    kinds = Counter(event.kind for event in compressed_day(model, minutes=5, seed=1))

    # 15,000 and 40,000 expected, so 3 % is at least 3.7 standard deviations.
    assert kinds[SUBMISSION] == pytest.approx(expected["submission"], rel=0.03)
    assert kinds[MX] == pytest.approx(expected["mx"], rel=0.03)


def test_compressed_day_follows_hourly_curve():
    model = SMALL_MODEL
    minutes = 4
    hour_length = minutes * 60 / 24
    daily = sum(model.daily_totals().values())

    events = list(compressed_day(model, minutes=minutes, seed=2))
    counts = hour_counts(events, hour_length)

    assert all(0 <= event.at < minutes * 60 for event in events)
    assert [event.at for event in events] == sorted(event.at for event in events)
    assert counts.index(max(counts)) == model.peak_hour() == 10
    for hour, share in enumerate(model.hour_shares()):
        expected = daily * share
        assert abs(counts[hour] - expected) <= 5 * math.sqrt(expected) + 1, f"hour {hour}"


def test_compressed_day_with_custom_curve():
    weights = tuple(1.0 if hour != 15 else 6.0 for hour in range(24))
    model = TrafficModel(users=100, hourly_weights=weights)

    counts = hour_counts(compressed_day(model, minutes=1, seed=3), hour_length=2.5)

    assert counts.index(max(counts)) == 15
    assert counts[15] == pytest.approx(11_000 * 6 / 29, rel=0.1)


def test_open_loop_rate_and_kinds():
    duration = 200.0
    rate = 50.0

    events = list(open_loop(SMALL_MODEL, rate=rate, duration=duration, seed=4))
    submissions = sum(1 for event in events if event.kind == SUBMISSION)

    assert len(events) == pytest.approx(rate * duration, rel=0.04)
    assert all(0 <= event.at < duration for event in events)
    assert [event.at for event in events] == sorted(event.at for event in events)
    assert submissions / len(events) == pytest.approx(30 / 110, abs=0.02)


def test_peak_hour_generator_compresses_time():
    model = TrafficModel(users=300)
    expected = model.hourly_rate(model.peak_hour()) * 3600

    events = list(peak_hour(model, seed=5, time_scale=0.1))

    assert len(events) == pytest.approx(expected, rel=0.08)
    assert all(0 <= event.at < 360 for event in events)
    assert max(event.at for event in events) > 350


def test_closed_loop_events_count_and_kinds():
    events = list(closed_loop_events(SMALL_MODEL, count=11_000, seed=6))
    submissions = sum(1 for event in events if event.kind == SUBMISSION)

    assert len(events) == 11_000
    assert {event.at for event in events} == {0.0}
    assert submissions / len(events) == pytest.approx(30 / 110, abs=0.02)


def test_recipient_counts_follow_weights():
    model = SMALL_MODEL
    weights = dict(model.recipients_weights)
    total_weight = sum(weights.values())

    events = list(closed_loop_events(model, count=20_000, seed=7))
    counts = Counter(len(event.recipients) for event in events)

    assert set(counts) <= set(weights)
    for count, weight in weights.items():
        assert counts[count] / len(events) == pytest.approx(weight / total_weight, abs=0.012), f"{count} recipients"


def test_addresses_and_local_share():
    model = TrafficModel(users=200, local_share=0.3)

    events = list(closed_loop_events(model, count=30_000, seed=8))
    submissions = [event for event in events if event.kind == SUBMISSION]
    mx = [event for event in events if event.kind == MX]
    recipients = [address for event in submissions for address in event.recipients]
    local = [address for address in recipients if address.endswith("@example.com")]

    assert len(local) / len(recipients) == pytest.approx(0.3, abs=0.02)
    for address in recipients:
        local_part, domain = address.split("@")
        assert domain == "example.com" or domain in model.remote_domains
        assert local_part.startswith("user")
    for event in submissions:
        assert event.sender.startswith("user")
        assert event.sender.endswith("@example.com")
        assert int(event.sender[4:].split("@")[0]) < 200
        assert len(set(event.recipients)) == len(event.recipients)
    for event in mx:
        assert event.sender.startswith("sender")
        assert event.sender.split("@")[1] in model.remote_domains
        assert all(address.endswith("@example.com") for address in event.recipients)


def test_local_share_extremes():
    for share, local_expected in ((0.0, False), (1.0, True)):
        model = TrafficModel(users=50, local_share=share)
        events = closed_loop_events(model, count=500, seed=9)
        for event in events:
            if event.kind == SUBMISSION:
                assert all(address.endswith("@example.com") == local_expected for address in event.recipients)


def test_generators_are_deterministic():
    model = TrafficModel(users=50)

    runs = [
        lambda seed: list(compressed_day(model, minutes=1, seed=seed)),
        lambda seed: list(open_loop(model, rate=20, duration=30, seed=seed)),
        lambda seed: list(peak_hour(model, seed=seed, time_scale=0.05)),
        lambda seed: list(closed_loop_events(model, count=300, seed=seed)),
    ]

    for run in runs:
        assert run(42) == run(42)
        assert run(42) != run(43)


def test_generators_are_lazy():
    model = TrafficModel()  # 50,000 users, 5.5 million events a day

    start = time.perf_counter()
    first = list(itertools.islice(compressed_day(model, minutes=60, seed=1), 1000))
    endless = list(itertools.islice(open_loop(model, rate=1e6, duration=1e9, seed=1), 1000))
    elapsed = time.perf_counter() - start

    assert len(first) == len(endless) == 1000
    assert elapsed < 1.0


def test_generators_reject_invalid_arguments():
    with pytest.raises(ValueError, match="rate"):
        open_loop(SMALL_MODEL, rate=0, duration=10, seed=1)
    with pytest.raises(ValueError, match="duration"):
        open_loop(SMALL_MODEL, rate=1, duration=-1, seed=1)
    with pytest.raises(ValueError, match="time_scale"):
        peak_hour(SMALL_MODEL, seed=1, time_scale=0)
    with pytest.raises(ValueError, match="minutes"):
        compressed_day(SMALL_MODEL, minutes=float("nan"), seed=1)
    with pytest.raises(ValueError, match="count"):
        closed_loop_events(SMALL_MODEL, count=-1, seed=1)
    # The model is validated when the generator is created, not at the first event.
    with pytest.raises(ValueError, match="users"):
        closed_loop_events(TrafficModel(users=0), count=1, seed=1)


# Validation


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("users", 0),
        ("users", -5),
        ("users", 2.5),
        ("sent_per_user_day", -1.0),
        ("received_per_user_day", float("inf")),
        ("hourly_weights", (1.0,) * 23),
        ("hourly_weights", (1.0,) * 25),
        ("hourly_weights", (-1.0,) + (1.0,) * 23),
        ("hourly_weights", (0.0,) * 24),
        ("peak_hour_factor", 0.5),
        ("peak_hour_factor", 24.0),
        ("recipients_weights", ()),
        ("recipients_weights", ((0, 1.0),)),
        ("recipients_weights", ((1, -0.5),)),
        ("local_share", -0.1),
        ("local_share", 1.5),
        ("domain", ""),
        ("domain", "bad domain"),
        ("remote_domains", ()),
        ("remote_domains", ("ok.example", "x@y")),
        ("remote_users_per_domain", 0),
    ],
)
def test_validate_names_field(field, value):
    model = dataclasses.replace(TrafficModel(), **{field: value})

    with pytest.raises(ValueError, match=field):
        model.validate()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("body_median", 0),
        ("body_sigma", -1.0),
        ("body_min", -1),
        ("body_max", 10),
        ("attachment_share", 1.1),
        ("attachments_min", 0),
        ("attachments_max", 0),
        ("attachment_min", 0),
        ("attachment_max", 50_000),
    ],
)
def test_validate_names_size_field(field, value):
    model = TrafficModel(size=dataclasses.replace(SizeDistribution(), **{field: value}))

    with pytest.raises(ValueError, match=f"size.{field}"):
        model.validate()


def test_validate_rejects_model_without_traffic():
    model = TrafficModel(sent_per_user_day=0, received_per_user_day=0)

    with pytest.raises(ValueError, match="sent_per_user_day"):
        model.validate()


def test_validate_peak_factor_limit_counts_ties():
    weights = (1.0,) * 20 + (5.0,) * 4  # four hours share the peak: at most 24 / 4 = 6

    TrafficModel(hourly_weights=weights, peak_hour_factor=5.9).validate()
    with pytest.raises(ValueError, match="peak_hour_factor"):
        TrafficModel(hourly_weights=weights, peak_hour_factor=6.0).validate()


# Messages


def check_wire_format(data: bytes) -> None:
    crlf = data.count(b"\r\n")
    assert data.count(b"\r") == crlf, "bare CR"
    assert data.count(b"\n") == crlf, "bare LF"
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def test_build_message_plain_text():
    event = Event(0.0, SUBMISSION, "user1@example.com", ("user2@remote1.example",), 5_000, ())
    message_id = unique_id("run1", 7)
    date = datetime(2024, 3, 5, 10, 30, tzinfo=UTC)

    data = build_message(event, message_id, random.Random(1), date=date)
    message = parse(data)

    check_wire_format(data)
    assert message.defects == []
    assert message["From"] == "user1@example.com"
    assert [str(address) for address in message["To"].addresses] == ["user2@remote1.example"]
    assert message["Subject"]
    assert message["Date"].datetime == date
    assert message["Message-ID"] == f"<{message_id}@loadtest.invalid>"
    assert message["X-Loadtest-Id"] == message_id
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "text/plain"
    body = data.split(b"\r\n\r\n", 1)[1]
    assert len(body) == 5_000
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))


def test_build_message_attachments_exact_sizes():
    sizes = (1, 56, 57, 58, 100_000, 58_368 * 3 + 5, 1_234_567)
    recipients = tuple(f"user{i}@example.com" for i in range(10))
    event = Event(0.0, MX, "sender3@remote2.example", recipients, 2_000, sizes)

    data = build_message(event, unique_id("run1", 8), random.Random(2))
    message = parse(data)

    check_wire_format(data)
    assert message.defects == []
    assert message.get_content_type() == "multipart/mixed"
    assert [str(address) for address in message["To"].addresses] == list(recipients)
    assert message["X-Loadtest-Id"] == "run1.8"
    attachments = list(message.iter_attachments())
    assert [len(part.get_content()) for part in attachments] == list(sizes)
    for part in attachments:
        assert part["Content-Transfer-Encoding"] == "base64"
        assert part.get_filename()
        assert part.get_content_maintype() in ("application", "image")
    text = message.get_body(("plain",))
    assert text is not None
    assert len(text.get_payload(decode=True)) == 2_000


def test_build_message_long_to_header_is_folded():
    recipients = tuple(f"user{i}@remote{i % 4 + 1}.example" for i in range(40))
    event = Event(0.0, SUBMISSION, "user1@example.com", recipients, 300, ())

    data = build_message(event, "x", random.Random(3))
    header = data.split(b"\r\n\r\n", 1)[0]
    message = parse(data)

    check_wire_format(data)
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))
    assert [str(address) for address in message["To"].addresses] == list(recipients)


def test_build_message_large_attachment_fast():
    event = Event(0.0, MX, "sender1@remote1.example", ("user1@example.com",), 5_000, (10_000_000,))

    start = time.perf_counter()
    data = build_message(event, "big", random.Random(4))
    elapsed = time.perf_counter() - start

    check_wire_format(data)
    assert elapsed < 1.0
    encoded = data.split(b"Content-Transfer-Encoding: base64\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
    lines = encoded.split(b"\r\n")
    assert lines[-1] == b""  # the encoding ends with CRLF
    assert all(len(line) == 76 for line in lines[:-2])
    assert 0 < len(lines[-2]) <= 76
    assert len(base64.b64decode(encoded)) == 10_000_000


def test_build_message_small_bodies():
    for body_size in (0, 1, 2, 3, 77, 78, 79, 80, 81):
        event = Event(0.0, SUBMISSION, "user1@example.com", ("user2@example.com",), body_size, ())

        data = build_message(event, "small", random.Random(body_size))

        check_wire_format(data)
        body = data.split(b"\r\n\r\n", 1)[1]
        assert len(body) == (body_size if body_size >= 2 else 0), f"body_size {body_size}"


def test_build_message_from_generated_events():
    model = TrafficModel(users=100, size=SizeDistribution(attachment_share=0.5, attachment_max=300_000))

    for number, event in enumerate(closed_loop_events(model, count=40, seed=10)):
        data = build_message(event, unique_id("gen", number), random.Random(number))
        message = parse(data)

        check_wire_format(data)
        assert message.defects == []
        attachment_sizes = [len(part.get_content()) for part in message.iter_attachments()]
        assert attachment_sizes == list(event.attachment_sizes)


def test_build_message_deterministic():
    event = Event(0.0, MX, "sender1@remote1.example", ("user1@example.com",), 3_000, (200_000,))
    date = datetime(2024, 1, 1, tzinfo=UTC)

    first = build_message(event, "same", random.Random(5), date=date)
    second = build_message(event, "same", random.Random(5), date=date)

    assert first == second


@pytest.mark.parametrize(
    ("sender", "recipients", "message_id"),
    [
        ("user1@example.com", ("user2@example.com",), "bad id"),
        ("user1@example.com", ("user2@example.com",), "a\r\nBcc: x@y"),
        ("user1@example.com", ("user2@example.com",), ""),
        ("user1@example.com\r\nBcc: x@y", ("user2@example.com",), "ok"),
        ("user1@example.com", ("a@b, c@d",), "ok"),
        ("user1@example.com", (), "ok"),
        ("user1@example.com", ("user2@example.com",), "x" * 256),
        ("user1@example.com", ("u" * 250 + "@example.com",), "ok"),
    ],
)
def test_build_message_rejects_header_injection(sender, recipients, message_id):
    event = Event(0.0, SUBMISSION, sender, recipients, 100, ())

    with pytest.raises(ValueError):
        build_message(event, message_id, random.Random(1))


def test_unique_id_format_and_uniqueness():
    ids = {unique_id("run-7", number) for number in range(100_000)}

    assert len(ids) == 100_000
    assert unique_id("run-7", 0) == "run-7.0"
    assert unique_id("run-7", 35) == "run-7.z"
    assert unique_id("run-7", 36) == "run-7.10"
    assert unique_id("a", 37) != unique_id("a-1", 1)
    assert unique_id("run-7.z", 1) == "run-7.z.1"
    assert unique_id("run-7.z", 1) != unique_id("run-7", 36 * 35 + 1)
    for bad_run in ("", "has space", "dot..ted", ".lead", "trail.", "x@y"):
        with pytest.raises(ValueError, match="run"):
            unique_id(bad_run, 1)
    with pytest.raises(ValueError, match="number"):
        unique_id("run", -1)
