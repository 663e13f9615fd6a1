"""The cache of verified credentials: hits only for the same address, hash and password."""

from __future__ import annotations

import time

from mta.auth.users import VerifiedCache, hash_password, verify_password


def test_cache_hits_same_credentials():
    cache = VerifiedCache()
    cache.add("alice@example.com", "scrypt$1", b"secret")
    assert cache.contains("alice@example.com", "scrypt$1", b"secret")


def test_cache_misses_other_password():
    cache = VerifiedCache()
    cache.add("alice@example.com", "scrypt$1", b"secret")
    assert not cache.contains("alice@example.com", "scrypt$1", b"Secret")


def test_cache_misses_changed_hash():
    cache = VerifiedCache()
    cache.add("alice@example.com", "scrypt$1", b"secret")
    assert not cache.contains("alice@example.com", "scrypt$2", b"secret")


def test_cache_misses_other_address():
    cache = VerifiedCache()
    cache.add("alice@example.com", "scrypt$1", b"secret")
    assert not cache.contains("bob@example.com", "scrypt$1", b"secret")


def test_cache_entry_expires():
    cache = VerifiedCache(ttl=0.01)
    cache.add("alice@example.com", "scrypt$1", b"secret")
    time.sleep(0.02)
    assert not cache.contains("alice@example.com", "scrypt$1", b"secret")


def test_cache_bounded():
    cache = VerifiedCache(max_entries=3)
    for number in range(10):
        cache.add(f"user{number}@example.com", "scrypt$1", b"secret")
    assert len(cache._entries) <= 3


def test_scrypt_round_trip():
    stored = hash_password("correct horse")
    assert verify_password(b"correct horse", stored)
    assert not verify_password(b"wrong horse", stored)
    assert not verify_password(b"correct horse", "locked")
