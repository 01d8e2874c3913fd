"""Connects to one broker address are spaced out after a failure, one at a time."""

from __future__ import annotations

import asyncio

import pytest

from services.kit.backoff import ConnectBackoff


class Broker:
    def __init__(self, up: bool) -> None:
        self.up = up
        self.attempts = 0

    async def open(self, host, port, **kwargs):
        self.attempts += 1
        await asyncio.sleep(0)
        if not self.up:
            raise OSError("connection refused")
        return (host, port)


async def test_after_a_failed_connect_no_client_tries_again_before_the_delay():
    backoff, broker = ConnectBackoff(initial=3600, maximum=3600), Broker(up=False)
    with pytest.raises(OSError):
        await backoff.connect(broker.open, "127.0.0.1", 9092)
    waiting = [asyncio.create_task(backoff.connect(broker.open, "127.0.0.1", 9092)) for _ in range(20)]
    await asyncio.sleep(0.2)
    assert broker.attempts == 1 and not any(t.done() for t in waiting)
    for t in waiting:
        t.cancel()
    assert await backoff.connect(Broker(up=True).open, "127.0.0.2", 9092) == ("127.0.0.2", 9092)  # another address


async def test_a_connect_that_succeeds_resets_the_backoff():
    backoff, broker = ConnectBackoff(initial=0.01, maximum=0.01), Broker(up=False)
    for _ in range(3):
        with pytest.raises(OSError):
            await backoff.connect(broker.open, "127.0.0.1", 9092)
    broker.up = True
    assert await backoff.connect(broker.open, "127.0.0.1", 9092) == ("127.0.0.1", 9092)
    assert await backoff.connect(broker.open, "127.0.0.1", 9092) == ("127.0.0.1", 9092)
    assert broker.attempts == 5


def test_the_most_attempts_follow_the_schedule():
    backoff = ConnectBackoff(initial=0.1, maximum=5.0)
    assert backoff.most_attempts(0) == 8  # 0.1, 0.2, ... 3.2, then 5 s steps
    assert backoff.most_attempts(400) == 8 + 100
    assert all(0.8 * 5.0 <= backoff.delay(n) <= 5.0 for n in range(7, 40))
