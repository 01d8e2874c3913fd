"""A TCP proxy between Kafka clients and a broker that a test can cut, and that counts the
connections clients open through it: the most honest count of connection attempts.

It runs in its own thread and event loop, so the test's loop (and whatever it blocks on)
does not slow it. While it is cut, it accepts each connection, counts it, and resets it at
once, and the connections that were open are reset too: to a client, the broker is gone.
A connection whose broker does not answer (the broker stopped) is reset the same way."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading


class KafkaProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port
        self.accepted = 0
        self.cut = False
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kafka-proxy-{port}", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> KafkaProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def cut_off(self) -> None:
        """From now on no client reaches the broker; open connections are reset."""
        asyncio.run_coroutine_threadsafe(self._cut_off(), self._loop).result(10)

    def restore(self) -> None:
        asyncio.run_coroutine_threadsafe(self._restore(), self._loop).result(10)

    async def _cut_off(self) -> None:
        self.cut = True
        for writer in list(self._writers):
            _reset(writer)

    async def _restore(self) -> None:
        self.cut = False

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
            self._server = server
            self._ready.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.cut:
            _reset(client_writer)
            return
        try:
            broker_reader, broker_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(client_writer)
            return
        self._writers.update((client_writer, broker_writer))
        try:
            await asyncio.gather(_pipe(client_reader, broker_writer), _pipe(broker_reader, client_writer))
        finally:
            for writer in (client_writer, broker_writer):
                self._writers.discard(writer)
                _reset(writer)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST, not FIN: what a client sees from a broker that went away."""
    with contextlib.suppress(OSError):
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
