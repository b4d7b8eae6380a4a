"""API keys: a fixed prefix and a checksum so leaked keys are recognisable, stored as a hash."""

from __future__ import annotations

import hashlib
import secrets
import string
import zlib

KEY_PREFIX = "mpk_"
_ALPHABET = string.ascii_letters + string.digits
_BODY_LENGTH = 32
_CHECKSUM_LENGTH = 6


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_LENGTH)


def generate_key() -> str:
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LENGTH))
    return f"{KEY_PREFIX}{body}{_checksum(body)}"


def is_well_formed(key: str) -> bool:
    """Prefix, length, alphabet and checksum; rejects typos before any database lookup."""
    if (
        not key.startswith(KEY_PREFIX)
        or len(key) != len(KEY_PREFIX) + _BODY_LENGTH + _CHECKSUM_LENGTH
    ):
        return False
    rest = key[len(KEY_PREFIX) :]
    if any(c not in _ALPHABET for c in rest):
        return False
    body, checksum = rest[:_BODY_LENGTH], rest[_BODY_LENGTH:]
    return secrets.compare_digest(_checksum(body), checksum)


def hash_key(key: str) -> str:
    # Keys carry 190 bits of randomness, so a fast hash is enough; a lookup by hash means
    # the secret itself is never compared byte by byte.
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + 6]
