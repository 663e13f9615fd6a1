"""Traffic model and event generators for load-testing the MTA with N mailboxes.

Nothing here does I/O: the generators yield Event records, and a driver turns
each one into an SMTP transaction, with loadtest.messages.build_message for
the content. Every generator is deterministic for its seed, finite and lazy,
so a day of 50,000 users (about 5.5 million events) is never held in memory.

The defaults are estimates for a business mail system, not measurements of
one. Set them from the site's own logs where those exist.

- 30 messages sent and 80 received per user per day: a Radicati Group study
  of 50 companies, as reported by CNET in 2003 ("Report: E-mail volume grows
  rapidly"), found that a typical corporate user sent 29 and received 81
  messages a day. A 2017 summary of email statistics by Waterford
  Technologies quotes up to 121 sent and received per office worker a day,
  so 110 may be low for a busy site.
- The hourly curve, the message sizes, the recipient counts and the local
  share are assumptions of this harness, with no published source. The
  comment or docstring of each states its assumption.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

SUBMISSION = "submission"
MX = "mx"

HOURS_PER_DAY = 24
SECONDS_PER_HOUR = 3600.0

# An assumed business day in one time zone: little mail at night, a ramp from
# 07:00, the busiest hour 10:00-11:00, a lunch dip and a second peak at
# 14:00-15:00. The busiest hour carries about 2.5 times the average hour.
DEFAULT_HOURLY_WEIGHTS = (
    0.5, 0.3, 0.2, 0.2, 0.2, 0.4,     # 00-06
    1.0, 3.0, 6.5, 9.0, 10.0, 9.0,    # 06-12
    6.5, 8.0, 9.5, 9.0, 7.5, 5.0,     # 12-18
    3.0, 2.0, 1.5, 1.2, 1.0, 0.7,     # 18-24
)

# Assumed (recipient count, weight) pairs: most mail goes to one person, a
# little to a team. The weights need not sum to 1.
DEFAULT_RECIPIENTS_WEIGHTS = ((1, 0.80), (2, 0.10), (3, 0.05), (5, 0.04), (10, 0.01))


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_domain(name: str, value: object) -> None:
    if not isinstance(value, str) or not value or any(c.isspace() or c in "@<>,;\"" for c in value):
        raise ValueError(f"{name} must be a non-empty domain name without spaces or any of @<>,;\", got {value!r}")


@dataclass(frozen=True)
class SizeDistribution:
    """Message sizes in octets: a lognormal text body plus, for a share of messages, attachments.

    The defaults are assumptions: a median text body of 5,000 octets, and 2 %
    of messages carrying 1 to 3 attachments whose sizes are log-uniform between
    100,000 and 10,000,000 octets. Attachment sizes are decoded sizes, before
    base64 adds a third.

    The 2 % share is chosen so that mean_size() is about 95,000 octets, close
    to the 2003 Radicati figure of 9.6 MB a day for 110 messages per corporate
    user (about 87 KB each). Raise attachment_share for an attachment-heavy load.
    """

    body_median: float = 5_000.0
    body_sigma: float = 1.0  # standard deviation of the natural log of the body size
    body_min: int = 100
    body_max: int = 1_000_000
    attachment_share: float = 0.02
    attachments_min: int = 1
    attachments_max: int = 3
    attachment_min: int = 100_000
    attachment_max: int = 10_000_000

    def validate(self) -> None:
        """Raise ValueError naming the first field with an invalid value."""
        if not _is_number(self.body_median) or self.body_median <= 0:
            raise ValueError(f"size.body_median must be a positive number of octets, got {self.body_median!r}")
        if not _is_number(self.body_sigma) or self.body_sigma < 0:
            raise ValueError(f"size.body_sigma must be zero or positive, got {self.body_sigma!r}")
        if not _is_count(self.body_min) or self.body_min < 0:
            raise ValueError(f"size.body_min must be an integer of at least 0, got {self.body_min!r}")
        if not _is_count(self.body_max) or self.body_max < self.body_min:
            raise ValueError(f"size.body_max must be an integer of at least body_min, got {self.body_max!r}")
        if not _is_number(self.attachment_share) or not 0.0 <= self.attachment_share <= 1.0:
            raise ValueError(f"size.attachment_share must be between 0 and 1, got {self.attachment_share!r}")
        if not _is_count(self.attachments_min) or self.attachments_min < 1:
            raise ValueError(f"size.attachments_min must be an integer of at least 1, got {self.attachments_min!r}")
        if not _is_count(self.attachments_max) or self.attachments_max < self.attachments_min:
            raise ValueError(
                f"size.attachments_max must be an integer of at least attachments_min, got {self.attachments_max!r}"
            )
        if not _is_count(self.attachment_min) or self.attachment_min < 1:
            raise ValueError(f"size.attachment_min must be an integer of at least 1, got {self.attachment_min!r}")
        if not _is_count(self.attachment_max) or self.attachment_max < self.attachment_min:
            raise ValueError(
                f"size.attachment_max must be an integer of at least attachment_min, got {self.attachment_max!r}"
            )

    def sample(self, rng: random.Random) -> tuple[int, list[int]]:
        """Draw one message: (text body size, attachment sizes), all in octets."""
        body = rng.lognormvariate(math.log(self.body_median), self.body_sigma)
        body_size = min(self.body_max, max(self.body_min, round(body)))

        attachments: list[int] = []
        if rng.random() < self.attachment_share:
            count = rng.randint(self.attachments_min, self.attachments_max)
            low = math.log(self.attachment_min)
            high = math.log(self.attachment_max)
            for _ in range(count):
                size = round(math.exp(rng.uniform(low, high)))
                attachments.append(min(self.attachment_max, max(self.attachment_min, size)))
        return body_size, attachments

    def mean_body_size(self) -> float:
        """Return the expected text body size, up to rounding, after clamping to body_min..body_max."""
        if self.body_sigma == 0:
            return float(min(self.body_max, max(self.body_min, self.body_median)))

        mu = math.log(self.body_median)
        sigma = self.body_sigma
        log_low = math.log(self.body_min) if self.body_min > 0 else -math.inf
        log_high = math.log(self.body_max) if self.body_max > 0 else -math.inf

        # Clamping moves the tails onto the bounds, so the mean is the mass
        # below body_min times body_min, plus the partial mean in between,
        # plus the mass above body_max times body_max.
        below = _normal_cdf((log_low - mu) / sigma)
        above = 1.0 - _normal_cdf((log_high - mu) / sigma)
        partial = math.exp(mu + sigma * sigma / 2.0) * (
            _normal_cdf((log_high - mu - sigma * sigma) / sigma)
            - _normal_cdf((log_low - mu - sigma * sigma) / sigma)
        )
        return self.body_min * below + partial + self.body_max * above

    def mean_attachment_size(self) -> float:
        """Return the expected size of one attachment, up to rounding."""
        if self.attachment_max == self.attachment_min:
            return float(self.attachment_min)
        return (self.attachment_max - self.attachment_min) / math.log(self.attachment_max / self.attachment_min)

    def mean_size(self) -> float:
        """Return the expected total of text body and decoded attachments per message, in octets.

        Headers, MIME framing and base64 overhead are not included.
        """
        mean_count = (self.attachments_min + self.attachments_max) / 2.0
        return self.mean_body_size() + self.attachment_share * mean_count * self.mean_attachment_size()


@dataclass(frozen=True)
class TrafficModel:
    """A day of mail for `users` local mailboxes.

    Submission is mail that local users send through port 587 with AUTH. MX
    is mail from outside to local users. Both follow the same hourly curve.
    """

    users: int = 50_000
    sent_per_user_day: float = 30.0
    received_per_user_day: float = 80.0
    # Relative volume of each hour of the day, 00:00 first. Only the ratios matter.
    hourly_weights: tuple[float, ...] = DEFAULT_HOURLY_WEIGHTS
    # Ratio of the busiest hour to the average hour. None keeps hourly_weights as given.
    peak_hour_factor: float | None = None
    size: SizeDistribution = field(default_factory=SizeDistribution)
    recipients_weights: tuple[tuple[int, float], ...] = DEFAULT_RECIPIENTS_WEIGHTS
    # Probability that a recipient of submitted mail is a local user. An assumption.
    local_share: float = 0.2
    domain: str = "example.com"
    remote_domains: tuple[str, ...] = ("remote1.example", "remote2.example", "remote3.example", "remote4.example")
    # Number of distinct remote addresses per remote domain, for remote
    # recipients of submitted mail and for the senders of MX mail.
    remote_users_per_domain: int = 10_000

    def validate(self) -> None:
        """Raise ValueError naming the first field with an invalid value.

        A size that is not a SizeDistribution raises TypeError.
        """
        if not _is_count(self.users) or self.users < 1:
            raise ValueError(f"users must be an integer of at least 1, got {self.users!r}")
        for name in ("sent_per_user_day", "received_per_user_day"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"{name} must be a number of at least 0, got {value!r}")
        if self.sent_per_user_day + self.received_per_user_day <= 0:
            raise ValueError("sent_per_user_day and received_per_user_day are both 0, so the model has no traffic")

        self._validate_hourly_weights()

        self._validate_recipients_weights()
        if not _is_number(self.local_share) or not 0.0 <= self.local_share <= 1.0:
            raise ValueError(f"local_share must be between 0 and 1, got {self.local_share!r}")

        _check_domain("domain", self.domain)
        if not isinstance(self.remote_domains, tuple) or not self.remote_domains:
            raise ValueError(f"remote_domains must be a non-empty tuple of domain names, got {self.remote_domains!r}")
        for remote in self.remote_domains:
            _check_domain("remote_domains", remote)
        if not _is_count(self.remote_users_per_domain) or self.remote_users_per_domain < 1:
            raise ValueError(
                f"remote_users_per_domain must be an integer of at least 1, got {self.remote_users_per_domain!r}"
            )

        if not isinstance(self.size, SizeDistribution):
            raise TypeError(f"size must be a SizeDistribution, got {self.size!r}")
        self.size.validate()

    def _validate_hourly_weights(self) -> None:
        weights = self.hourly_weights
        if not isinstance(weights, tuple) or len(weights) != HOURS_PER_DAY:
            count = len(weights) if isinstance(weights, (tuple, list)) else "not a tuple"
            raise ValueError(f"hourly_weights must be a tuple of 24 weights, got {count}")
        for hour, weight in enumerate(weights):
            if not _is_number(weight) or weight < 0:
                raise ValueError(f"hourly_weights[{hour}] must be a number of at least 0, got {weight!r}")
        if sum(weights) <= 0:
            raise ValueError("hourly_weights are all 0, so the day has no traffic")

        factor = self.peak_hour_factor
        if factor is None:
            return
        if not _is_number(factor) or factor < 1:
            raise ValueError(f"peak_hour_factor must be None or a number of at least 1, got {factor!r}")
        # Whatever the reshaping, hours that share the maximum weight keep
        # sharing it, so they cannot carry more than 24 / ties of the day.
        ties = weights.count(max(weights))
        limit = HOURS_PER_DAY / ties
        if factor > _peak_factor(weights) and factor >= limit:
            raise ValueError(
                f"peak_hour_factor must be below {limit:g} for these hourly_weights, got {factor!r}: "
                f"{ties} hour(s) share the maximum weight, and the day has 24 hours"
            )

    def _validate_recipients_weights(self) -> None:
        pairs = self.recipients_weights
        if not isinstance(pairs, tuple) or not pairs:
            raise ValueError(f"recipients_weights must be a non-empty tuple of (count, weight) pairs, got {pairs!r}")
        for pair in pairs:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ValueError(f"recipients_weights must contain (count, weight) pairs, got {pair!r}")
            count, weight = pair
            if not _is_count(count) or count < 1:
                raise ValueError(f"recipients_weights count must be an integer of at least 1, got {count!r}")
            if not _is_number(weight) or weight < 0:
                raise ValueError(f"recipients_weights weight must be a number of at least 0, got {weight!r}")
        if sum(weight for _, weight in pairs) <= 0:
            raise ValueError("recipients_weights are all 0, so no recipient count can be drawn")

    def daily_totals(self) -> dict[str, float]:
        """Return the messages per day of each kind: {"submission": ..., "mx": ...}."""
        return {
            SUBMISSION: self.users * self.sent_per_user_day,
            MX: self.users * self.received_per_user_day,
        }

    def hour_shares(self) -> tuple[float, ...]:
        """Return the share of the day's messages in each hour, 00:00 first, summing to 1.

        With peak_hour_factor set, the curve is reshaped so that the busiest hour
        carries that multiple of the average hour and the order of the hours
        stays the same. A flatter curve is a mix of the given curve with a flat
        one. A steeper curve raises each weight to a power found by bisection.
        """
        weights = self.hourly_weights
        factor = self.peak_hour_factor
        if factor is not None:
            weights = _reshape(weights, factor)
        total = sum(weights)
        return tuple(weight / total for weight in weights)

    def hourly_rate(self, hour: float) -> float:
        """Return the messages per second of both kinds during `hour` of the day.

        The rate is constant within each hour. Hours outside 0..24 wrap around,
        so 25.5 is 01:30 of the next day.
        """
        if not _is_number(hour):
            raise ValueError(f"hour must be a finite number, got {hour!r}")
        share = self.hour_shares()[math.floor(hour) % HOURS_PER_DAY]
        return sum(self.daily_totals().values()) * share / SECONDS_PER_HOUR

    def peak_hour(self) -> int:
        """Return the busiest hour of the day (0-23), the earliest one on ties."""
        shares = self.hour_shares()
        return shares.index(max(shares))


def _peak_factor(weights: tuple[float, ...]) -> float:
    return max(weights) * len(weights) / sum(weights)


def _reshape(weights: tuple[float, ...], factor: float) -> tuple[float, ...]:
    """Return weights whose max-to-mean ratio is `factor`, in the same hour order."""
    current = _peak_factor(weights)
    if math.isclose(factor, current, rel_tol=1e-12):
        return weights

    mean = sum(weights) / len(weights)
    if factor < current:
        # Scaling every deviation from the mean by t scales the peak's excess
        # over the mean by t and keeps every weight positive for t <= 1.
        t = (factor - 1.0) / (current - 1.0)
        return tuple(mean + t * (weight - mean) for weight in weights)

    # Stretching deviations beyond t = 1 would make quiet hours negative, so
    # raise the weights to a power p > 1 instead. The ratio grows with p
    # towards 24 / ties, which validate() requires `factor` to stay below.
    peak = max(weights)
    relative = [weight / peak for weight in weights]

    def ratio(power: float) -> float:
        return len(relative) / sum(value**power for value in relative)

    low, high = 1.0, 2.0
    while ratio(high) < factor:
        low, high = high, high * 2.0
        if high > 2.0**60:
            raise ValueError(f"peak_hour_factor {factor!r} cannot be reached with these hourly_weights")
    for _ in range(200):
        middle = (low + high) / 2.0
        if ratio(middle) < factor:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * high:
            break
    power = (low + high) / 2.0
    return tuple(value**power for value in relative)


@dataclass(frozen=True)
class Event:
    """One message to send: when, through which entry point, from whom, to whom and how large."""

    at: float  # seconds from the start of the run
    kind: str  # SUBMISSION (a local user sends, AUTH on 587) or MX (outside to local users)
    sender: str
    recipients: tuple[str, ...]
    body_size: int  # octets of the text part
    attachment_sizes: tuple[int, ...]  # decoded octets of each attachment


class _EventFactory:
    """Sampler of event kinds, addresses and sizes for one model, with its lookup tables computed once."""

    def __init__(self, model: TrafficModel, rng: random.Random) -> None:
        model.validate()
        self.model = model
        self.rng = rng
        totals = model.daily_totals()
        self.submission_share = totals[SUBMISSION] / (totals[SUBMISSION] + totals[MX])
        self.recipient_counts = [count for count, _ in model.recipients_weights]
        self.cumulative_weights: list[float] = []
        running = 0.0
        for _, weight in model.recipients_weights:
            running += weight
            self.cumulative_weights.append(running)
        self.remote_pool = len(model.remote_domains) * model.remote_users_per_domain

    def make(self, at: float) -> Event:
        rng = self.rng
        model = self.model
        if rng.random() < self.submission_share:
            kind = SUBMISSION
            sender = f"user{rng.randrange(model.users)}@{model.domain}"
            recipients = self._submission_recipients()
        else:
            kind = MX
            domain = model.remote_domains[rng.randrange(len(model.remote_domains))]
            sender = f"sender{rng.randrange(model.remote_users_per_domain)}@{domain}"
            recipients = self._local_addresses(self._recipient_count())
        body_size, attachment_sizes = model.size.sample(rng)
        return Event(at, kind, sender, tuple(recipients), body_size, tuple(attachment_sizes))

    def _recipient_count(self) -> int:
        point = self.rng.random() * self.cumulative_weights[-1]
        index = bisect.bisect_right(self.cumulative_weights, point)
        return self.recipient_counts[min(index, len(self.recipient_counts) - 1)]

    def _submission_recipients(self) -> list[str]:
        count = self._recipient_count()
        local_count = sum(1 for _ in range(count) if self.rng.random() < self.model.local_share)
        recipients = self._local_addresses(local_count) + self._remote_addresses(count - local_count)
        self.rng.shuffle(recipients)
        return recipients

    # Recipients of one message are distinct. NOTE: a model with fewer users
    # (or remote addresses) than a drawn count gets fewer recipients than drawn.
    def _local_addresses(self, count: int) -> list[str]:
        indices = self.rng.sample(range(self.model.users), min(count, self.model.users))
        return [f"user{i}@{self.model.domain}" for i in indices]

    def _remote_addresses(self, count: int) -> list[str]:
        domains = self.model.remote_domains
        indices = self.rng.sample(range(self.remote_pool), min(count, self.remote_pool))
        return [f"user{i // len(domains)}@{domains[i % len(domains)]}" for i in indices]


def _require_positive(name: str, value: object) -> None:
    if not _is_number(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number greater than 0, got {value!r}")


def _poisson_segment(
    factory: _EventFactory, start: float, end: float, rate: float
) -> Iterator[Event]:
    """Yield Poisson arrivals at `rate` per second in [start, end)."""
    if rate <= 0:
        return
    at = start
    while True:
        at += factory.rng.expovariate(rate)
        if at >= end:
            return
        yield factory.make(at)


def open_loop(model: TrafficModel, rate: float, duration: float, seed: int) -> Iterator[Event]:
    """Generate Poisson arrivals at `rate` messages per second for `duration` seconds.

    Kinds follow the model's daily proportion of submission to MX mail. The
    model's hourly curve does not apply.
    """
    _require_positive("rate", rate)
    if not _is_number(duration) or duration < 0:
        raise ValueError(f"duration must be a finite number of at least 0, got {duration!r}")
    factory = _EventFactory(model, random.Random(seed))
    return _poisson_segment(factory, 0.0, float(duration), float(rate))


def peak_hour(model: TrafficModel, seed: int, time_scale: float = 1.0) -> Iterator[Event]:
    """Generate the busiest hour of the model's day, 3600 * time_scale seconds long.

    The event count stays that of the model's busiest hour, so time_scale 0.1
    sends it in 360 s at ten times the rate.
    """
    _require_positive("time_scale", time_scale)
    factory = _EventFactory(model, random.Random(seed))
    rate = model.hourly_rate(model.peak_hour()) / time_scale
    return _poisson_segment(factory, 0.0, SECONDS_PER_HOUR * time_scale, rate)


def compressed_day(model: TrafficModel, minutes: float, seed: int) -> Iterator[Event]:
    """Generate the model's whole day of traffic, following its hourly curve, in `minutes`.

    Each hour of the day becomes minutes * 60 / 24 seconds of the run. Each
    of those segments is a Poisson process with the hour's share of the daily
    totals as its mean count, so the day's count is Poisson around the total.
    """
    _require_positive("minutes", minutes)
    factory = _EventFactory(model, random.Random(seed))
    return _compressed_day(factory, minutes * 60.0 / HOURS_PER_DAY)


def _compressed_day(factory: _EventFactory, hour_length: float) -> Iterator[Event]:
    daily = sum(factory.model.daily_totals().values())
    for hour, share in enumerate(factory.model.hour_shares()):
        start = hour * hour_length
        yield from _poisson_segment(factory, start, start + hour_length, daily * share / hour_length)


def closed_loop_events(model: TrafficModel, count: int, seed: int) -> Iterator[Event]:
    """Generate `count` events, all with at=0.0, for a driver that sends as fast as its sessions allow."""
    if not _is_count(count) or count < 0:
        raise ValueError(f"count must be an integer of at least 0, got {count!r}")
    factory = _EventFactory(model, random.Random(seed))
    return (factory.make(0.0) for _ in range(count))
