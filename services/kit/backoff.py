"""Connecting to Kafka with exponential backoff, for every Kafka client of the process.

aiokafka 0.14 has no reconnect backoff (no `reconnect_backoff_ms`): a client connects
whenever it is asked to, and with the broker down it is asked all the time (metadata
refresh, coordinator lookup, fetch, send, readiness ping, each retrying every
`retry_backoff_ms`, 100 ms), so a service made hundreds to thousands of failed connects a
second. Every aiokafka connection, whoever makes it (faststream's consumers, producer and
admin client, the relay's producer, topic provisioning, the CLI), is opened by
`aiokafka.client.create_conn`. `install()` wraps that one function, once per process, so
that connects to one broker address are spaced out:

- after a failed connect the next one waits `initial` seconds, then twice that, and so
  on up to `maximum` (each delay 80-100% of its step, so instances do not retry in step);
- one attempt at a time per address: a client that needs a connection meanwhile waits
  for the next attempt instead of making its own;
- a connect that succeeds (TCP and Kafka's ApiVersions handshake) resets it.

So over an outage of T seconds a process tries each broker address at most about
log2(maximum / initial) + 1 + T / (0.8 * maximum) times, however many clients it has.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import aiokafka.client

from services.kit.settings import KafkaSettings

_WAITING_POLL = 0.1  # how often a caller waiting on another's attempt looks again
_ATTEMPT_AT_MOST = 60.0  # an attempt never seen to end (its event loop closed) stops holding others back


@dataclass
class _Address:
    failures: int = 0
    next_attempt: float = 0.0  # time.monotonic()
    attempt_started: float | None = None  # time.monotonic() of the attempt in flight


class ConnectBackoff:
    """Per broker address: when the next connect may be tried."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self._addresses: dict[tuple[str, int], _Address] = {}

    def delay(self, failures: int) -> float:
        step = min(self.initial * 2 ** min(failures - 1, 32), self.maximum)
        return step * random.uniform(0.8, 1.0)  # noqa: S311 - jitter, not secrets

    def most_attempts(self, seconds: float) -> int:
        """The most connects to one address that fail over `seconds`, by this schedule."""
        doubling = 1
        while self.initial * 2 ** (doubling - 1) < self.maximum:
            doubling += 1
        return doubling + 1 + int(seconds / (0.8 * self.maximum))

    async def connect(self, open_connection, host, port, **kwargs):
        address = self._addresses.setdefault((host, port), _Address())
        while True:
            now = time.monotonic()
            wait = address.next_attempt - now
            in_flight = address.attempt_started is not None and now - address.attempt_started < _ATTEMPT_AT_MOST
            if wait <= 0 and not in_flight:
                break
            await asyncio.sleep(max(wait, 0.0) or _WAITING_POLL)
        address.attempt_started = time.monotonic()
        try:
            conn = await open_connection(host, port, **kwargs)
        except asyncio.CancelledError:
            raise
        except BaseException:
            address.failures += 1
            address.next_attempt = time.monotonic() + self.delay(address.failures)
            raise
        finally:
            address.attempt_started = None
        address.failures = 0
        address.next_attempt = 0.0
        return conn


_original_create_conn = aiokafka.client.create_conn
_installed: ConnectBackoff | None = None


def install(kafka: KafkaSettings) -> ConnectBackoff:
    """Space out this process's connects to Kafka, per `kafka`'s reconnect settings.
    Installing again with the same settings keeps the state; other settings replace it."""
    global _installed
    initial, maximum = kafka.reconnect_backoff_ms / 1000, kafka.reconnect_backoff_max_ms / 1000
    if _installed is not None and (_installed.initial, _installed.maximum) == (initial, maximum):
        return _installed
    backoff = ConnectBackoff(initial, maximum)

    async def create_conn(host, port, **kwargs):
        return await backoff.connect(_original_create_conn, host, port, **kwargs)

    aiokafka.client.create_conn = create_conn
    _installed = backoff
    return backoff


def installed() -> ConnectBackoff | None:
    return _installed
