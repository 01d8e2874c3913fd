"""Keeping the authentication code: only its argon2id hash is stored (argon2-cffi, with its
RFC 9106 low-memory parameters: 64 MiB, 3 passes, 4 lanes; about 0.15 s a hash here), and a
code typed by the destination is checked against it by the library, whose comparison is
constant-time. Hashing runs in a worker thread, so the event loop keeps serving.

The code itself is never stored, logged, published or put in an error message: it exists
in the sender's answer (when made or regenerated) and in the destination's request body."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_HASHER = PasswordHasher()  # argon2id


async def hash_code(code: str) -> str:
    """The code's argon2id hash ('$argon2id$v=19$m=65536,t=3,p=4$...'), salted afresh."""
    return await asyncio.to_thread(_HASHER.hash, code)


async def matches(code_hash: str, code: str) -> bool:
    """Whether `code` is the one hashed. A hash that cannot be read matches nothing."""
    def verify() -> bool:
        try:
            return _HASHER.verify(code_hash, code)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)
