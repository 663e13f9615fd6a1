"""Benchmark DKIM signing on one core: mta.dkim.DkimSigner against plain dkimpy.

Run it as ``python -m loadtest.sign_bench [--messages N] [--seconds S]``. It
signs 5 KB plain-text messages with an RSA-2048 key, relaxed/relaxed, in a
single thread, and prints signatures per second for both signers and their
ratio. dkimpy gets a twentieth of the message count because its pure-Python
RSA is slow. Nothing goes over the network.
"""

from __future__ import annotations

import argparse
import logging
import platform
import random
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import format_datetime, make_msgid

import cryptography
import dkim
import dkim.util
from cryptography.hazmat.backends.openssl import backend as openssl_backend
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from loadtest.machine import cpu_model
from mta.dkim import DkimKey, DkimSigner

DOMAIN = "example.com"
SELECTOR = "bench"
MESSAGE_SIZE = 5 * 1024
MESSAGE_POOL_SIZE = 64
DKIMPY_SHARE = 20

WORDS = (
    "the invoice for order shipment arrives tomorrow morning please confirm "
    "delivery address payment reference account balance meeting agenda notes "
    "quarterly report attached figures revenue forecast team schedule update "
    "regards thanks question answer project deadline review draft contract"
).split()


def build_message(rng: random.Random, size: int = MESSAGE_SIZE) -> bytes:
    """Build a plain-text message of about size octets with CRLF line endings."""
    headers = (
        f"From: Alice Sender <alice@{DOMAIN}>\r\n"
        f"To: Bob Receiver <bob{rng.randrange(1000)}@example.net>\r\n"
        f"Subject: {' '.join(rng.choices(WORDS, k=5)).capitalize()}\r\n"
        f"Date: {format_datetime(datetime.now(timezone.utc))}\r\n"
        f"Message-ID: {make_msgid(domain=DOMAIN)}\r\n"
        "\r\n"
    ).encode("ascii")

    lines = []
    length = len(headers)
    while length < size:
        line = " ".join(rng.choices(WORDS, k=rng.randint(6, 12)))
        # Paragraph breaks and double spaces, as in typed text.
        if rng.random() < 0.1:
            line = ""
        elif rng.random() < 0.1:
            line = line.replace(" ", "  ", 1)
        lines.append(line.encode("ascii") + b"\r\n")
        length += len(lines[-1])
    return headers + b"".join(lines)


def measure(sign: Callable[[bytes], bytes], messages: list[bytes], max_count: int, max_seconds: float) -> tuple[int, float]:
    """Sign messages in a loop until max_count signatures or max_seconds; return (count, seconds)."""
    count = 0
    start = time.perf_counter()
    elapsed = 0.0
    while count < max_count and elapsed < max_seconds:
        sign(messages[count % len(messages)])
        count += 1
        elapsed = time.perf_counter() - start
    return count, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--messages", type=int, default=20000,
        help="maximum number of messages DkimSigner signs; dkimpy signs 1/%d of it (default: %%(default)s)" % DKIMPY_SHARE,
    )  # fmt: skip
    parser.add_argument(
        "--seconds", type=float, default=5.0,
        help="maximum time in seconds for each signer (default: %(default)s)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.messages < 1 or args.seconds <= 0:
        parser.error("--messages must be at least 1 and --seconds greater than 0")
    logging.basicConfig(level=logging.WARNING)

    rng = random.Random(1)
    messages = [build_message(rng) for _ in range(MESSAGE_POOL_SIZE)]
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    signer = DkimSigner([DkimKey(domain=DOMAIN, selector=SELECTOR, private_key=key)])

    # dkimpy signs the same header list, so both do the same work.
    signature = signer.sign(messages[0], DOMAIN)
    header_list = [
        name.strip() for name in re.split(rb"\s*:\s*", dkim.util.parse_tag_value(signature.split(b":", 1)[1])[b"h"])
    ]

    def sign_with_dkimpy(message: bytes) -> bytes:
        return dkim.sign(
            message,
            SELECTOR.encode(),
            DOMAIN.encode(),
            pem,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=header_list,
        )

    if not _outputs_identical(signer, sign_with_dkimpy, messages[0]):
        print("error: DkimSigner output differs from dkimpy's for the same message and time", file=sys.stderr)
        return 1

    print(f"python {platform.python_version()}, cryptography {cryptography.__version__}, "
          f"{openssl_backend.openssl_version_text()}, dkimpy {_dkimpy_version()}")  # fmt: skip
    print(f"cpu: {cpu_model()}, 1 thread")
    average_size = sum(map(len, messages)) // len(messages)
    print(f"messages: {average_size} octets on average, RSA-2048, relaxed/relaxed, h={b':'.join(header_list).decode()}")

    signer_count, signer_seconds = measure(lambda m: signer.sign(m, DOMAIN), messages, args.messages, args.seconds)
    dkimpy_max = max(1, args.messages // DKIMPY_SHARE)
    dkimpy_count, dkimpy_seconds = measure(sign_with_dkimpy, messages, dkimpy_max, args.seconds)

    digest = bytes(32)
    rsa_count, rsa_seconds = measure(
        lambda _: key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256())), messages, args.messages, args.seconds
    )

    signer_rate = signer_count / signer_seconds
    dkimpy_rate = dkimpy_count / dkimpy_seconds
    print(f"DkimSigner: {signer_count} signatures in {signer_seconds:.2f} s = {signer_rate:.0f}/s")
    print(f"dkimpy:     {dkimpy_count} signatures in {dkimpy_seconds:.2f} s = {dkimpy_rate:.0f}/s")
    print(f"ratio:      {signer_rate / dkimpy_rate:.1f}x")
    print(f"RSA-2048 private-key operation alone, for reference: {rsa_count / rsa_seconds:.0f}/s")
    return 0


def _outputs_identical(signer: DkimSigner, sign_with_dkimpy: Callable[[bytes], bytes], message: bytes) -> bool:
    """Return whether both signers produce the same DKIM-Signature field for message."""
    # dkimpy takes t= from the clock, so a comparison is valid only when the
    # second did not change in between. Three tries make a miss unlikely.
    for _ in range(3):
        now = int(time.time())
        expected = sign_with_dkimpy(message)
        if int(time.time()) == now:
            return signer.sign(message, DOMAIN, now=now) == expected
    raise RuntimeError("clock changed second during each of 3 comparisons, rerun the benchmark")


def _dkimpy_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dkimpy")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
