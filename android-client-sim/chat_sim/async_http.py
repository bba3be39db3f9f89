"""A lean HTTP/1.1 keep-alive client on asyncio streams, for the load generator.

Why not `chat_sim.api`: load sends hundreds of requests a second from one process that
shares two cores with the whole stack; http.client costs a thread per concurrent
request and parses headers with the email package. This speaks just what the server
answers (Content-Length or chunked bodies, keep-alive) and nothing else.

Guarantee: a request that fails on a reused connection before any answer (the server
closed it while idle) is sent again once on a new connection; load's sends carry a
client_id, so a repeat can never store a message twice.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any


class HttpError(Exception):
    """No answer at all (connection refused, reset, timed out)."""


class AsyncHttp:
    def __init__(self, host: str, port: int, *, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._host_header = f"{host}:{port}".encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: Any = None,
                      token: str | None = None) -> tuple[int, Any]:
        """Send a request; return (status, decoded JSON body or None)."""
        payload = b"" if body is None else json.dumps(body).encode()
        head = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + self._host_header]
        if token:
            head.append(f"Authorization: Token {token}".encode())
        if body is not None:
            head.append(b"Content-Type: application/json")
        head.append(f"Content-Length: {len(payload)}".encode())
        raw = b"\r\n".join(head) + b"\r\n\r\n" + payload
        for attempt in (1, 2):
            reused = self._writer is not None
            try:
                async with asyncio.timeout(self.timeout):
                    if not reused:
                        await self._connect()
                    self._writer.write(raw)
                    status, data, close = await self._read_response()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
                self.close()
                if reused and attempt == 1 and not isinstance(exc, TimeoutError):
                    continue
                raise HttpError(f"{method} {path}: {exc.__class__.__name__}: {exc}") from None
            if close:
                self.close()
            return status, (json.loads(data) if data else None)
        raise AssertionError("not reached: the second attempt returns or raises")

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def _read_response(self) -> tuple[int, bytes, bool]:
        reader = self._reader
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, close = None, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = value.strip().lower() == b"close"
        if chunked:
            data = await self._read_chunked()
        elif length is not None:
            data = await reader.readexactly(length)
        else:
            data, close = await reader.read(), True
        return status, data, close

    async def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")  # no trailers are sent
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
