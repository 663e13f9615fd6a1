"""Benchmark the chunked body format (mta.storage.stream) on one core.

Run it as ``python -m loadtest.crypto_bench [--megabytes N] [--seconds S]``.
For 64 KiB and 1 MiB chunks, in one thread, it encrypts a random 32 MiB body
fed in 1 MiB pieces, and decrypts the object fed in the pieces the encryptor
yielded. For reference it also times plain AESGCM calls over the same body
in chunk-sized slices, which is the cost without the format. Each case runs
32 MiB passes until N MB or S seconds have passed, and prints plaintext MB/s
(10^6 octets per second) of the best and of the median pass. The best pass
is the steadier figure on a shared machine, where other processes slow some
passes down. Nothing goes over the network.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import cryptography
from cryptography.hazmat.backends.openssl import backend as openssl_backend
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from loadtest.machine import cpu_flags, cpu_model
from mta.storage.stream import decrypt_iter, encrypt_iter

CHUNK_SIZES = (64 * 1024, 1024 * 1024)
PIECE_SIZE = 1024 * 1024
# One pass encrypts or decrypts this much: many chunks, so a pass works
# through a body rather than one buffer that stays in the cache.
OBJECT_SIZE = 32 * 1024 * 1024
KEY_ID = "bench"
OBJECT_NAME = "BENCHMARKOBJECT1"
MEGABYTE = 1000 * 1000
MEBIBYTE = 1024 * 1024


def measure(run_pass: Callable[[], None], max_octets: int, max_seconds: float) -> tuple[float, float]:
    """Run passes of OBJECT_SIZE octets until max_octets or max_seconds, and return the best and median pass in MB/s."""
    durations = []
    total = 0.0
    while len(durations) * OBJECT_SIZE < max_octets and total < max_seconds:
        start = time.perf_counter()
        run_pass()
        durations.append(time.perf_counter() - start)
        total += durations[-1]
    megabytes = OBJECT_SIZE / MEGABYTE
    return megabytes / min(durations), megabytes / statistics.median(durations)


def bench_chunk_size(chunk_size: int, max_octets: int, max_seconds: float) -> dict[str, tuple[float, float]]:
    """Return the best and median MB/s of encryption, decryption and plain AESGCM calls with one chunk size."""
    key = AESGCM.generate_key(bit_length=256)
    plaintext = os.urandom(OBJECT_SIZE)
    # Separate bytes objects, as reads from a socket or a file would be.
    pieces = [plaintext[start : start + PIECE_SIZE] for start in range(0, OBJECT_SIZE, PIECE_SIZE)]
    ciphertexts = list(encrypt_iter(pieces, key, KEY_ID, OBJECT_NAME, chunk_size=chunk_size))

    def encrypt_pass() -> None:
        for _ in encrypt_iter(pieces, key, KEY_ID, OBJECT_NAME, chunk_size=chunk_size):
            pass

    def decrypt_pass() -> None:
        for _ in decrypt_iter(ciphertexts, key, OBJECT_NAME):
            pass

    aead = AESGCM(key)
    view = memoryview(plaintext)

    def aesgcm_pass() -> None:
        for start in range(0, OBJECT_SIZE, chunk_size):
            aead.encrypt(bytes(12), view[start : start + chunk_size], None)

    return {
        "encrypt": measure(encrypt_pass, max_octets, max_seconds),
        "decrypt": measure(decrypt_pass, max_octets, max_seconds),
        "aesgcm": measure(aesgcm_pass, max_octets, max_seconds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--megabytes", type=int, default=256,
        help="plaintext per case: passes stop once this many MB (10^6 octets) are done (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--seconds", type=float, default=10.0,
        help="time per case: passes stop once this many seconds are spent (default: %(default)s)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.megabytes < 1 or args.seconds <= 0:
        parser.error("--megabytes must be at least 1 and --seconds greater than 0")

    print(f"python {platform.python_version()}, cryptography {cryptography.__version__}, "
          f"{openssl_backend.openssl_version_text()}")  # fmt: skip
    aes_flags = sorted(cpu_flags() & {"aes", "pclmulqdq", "vaes", "vpclmulqdq", "avx2", "avx512f"})
    print(f"cpu: {cpu_model()}, 1 thread, flags: {' '.join(aes_flags) or 'none of aes, pclmulqdq, vaes, avx2'}")
    print(f"body: {OBJECT_SIZE // MEBIBYTE} MiB in {PIECE_SIZE // MEBIBYTE} MiB pieces, "
          f"{args.megabytes} MB or {args.seconds:g} s per case")  # fmt: skip
    print("MB/s of the best pass, then of the median pass")

    print(f"{'chunk':>8}  {'encrypt':>15}  {'decrypt':>15}  {'AESGCM alone':>15}")
    for chunk_size in CHUNK_SIZES:
        rates = bench_chunk_size(chunk_size, args.megabytes * MEGABYTE, args.seconds)
        label = f"{chunk_size // 1024} KiB"
        columns = [f"{best:,.0f} / {median:,.0f}" for best, median in rates.values()]
        print(f"{label:>8}  " + "  ".join(f"{column:>15}" for column in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
