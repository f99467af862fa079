"""A minimal asyncio WebSocket client (RFC 6455, text frames only) for the
chaos scenarios that need raw control over a session: racing connects and
sending malformed frames. Not a general client: `rtc-client` is that."""

import asyncio
import base64
import json
import os
import struct
import urllib.parse


class Closed(Exception):
    pass


class WsSession:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.closed = False

    @classmethod
    async def connect(cls, url, timeout=5.0):
        """Opens `ws://host:port/path?query`; returns (status, session or
        the refusal body)."""
        u = urllib.parse.urlsplit(url)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(u.hostname, u.port), timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        path = u.path + ("?" + u.query if u.query else "")
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
            writer.close()
            return status, body.decode(errors="replace")
        return status, cls(reader, writer)

    def send_raw(self, payload: bytes, opcode=1):
        """One masked frame of `payload` (text by default)."""
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)

    async def recv(self, timeout=5.0):
        """The next text frame as JSON-decoded value (or raw text); raises
        Closed on a close frame or EOF. Answers pings."""
        while True:
            try:
                b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), timeout)
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack("!H", await self.reader.readexactly(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
                data = await self.reader.readexactly(n)
            except (asyncio.IncompleteReadError, ConnectionError):
                self.closed = True
                raise Closed()
            opcode = b0 & 0x0F
            if opcode == 8:
                self.closed = True
                raise Closed()
            if opcode == 9:
                self.send_raw(data, opcode=10)
                continue
            if opcode == 1:
                text = data.decode(errors="replace")
                try:
                    return json.loads(text)
                except ValueError:
                    return text

    def close(self):
        self.closed = True
        try:
            self.writer.close()
        except Exception:
            pass
