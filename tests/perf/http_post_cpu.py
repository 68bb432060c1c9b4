"""CPU time per ``HttpPool.post``, in process, against a loopback HTTP server in another process.

    .venv/bin/python tests/perf/http_post_cpu.py [REQUESTS] [CONCURRENCY]

The server (a bare asyncio protocol answering every request with a fixed
200) runs in a child process, so the CPU time measured here is the pool's
and the event loop's alone. The requests look like the webhook channel's: a
JSON body of about 300 bytes, the Standard Webhooks headers and a Host header.
Prints the CPU microseconds per request (user plus system time of this
process) and the requests per second; a measurement, not a test.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import sys
import time

from channels.http import HttpPool
from channels.webhook.channel import WebhookConfig

_ANSWER = (b"HTTP/1.1 200 OK\r\nServer: bench\r\nContent-Type: application/json\r\n"
           b"Content-Length: 11\r\n\r\n{\"ok\":true}")


class _Answering(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(_ANSWER)


def _serve(sock: socket.socket) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Answering, sock=sock)
        await server.serve_forever()

    asyncio.run(main())


async def _run(port: int, requests: int, concurrency: int) -> tuple[float, float]:
    pool = HttpPool(WebhookConfig(trust_env=False))
    url = f"http://127.0.0.1:{port}/hooks/tidings?token=s3cret"
    body = b'{"id":"d-1","type":"jobs.match.found","recipient":"u-1","title":"A match","text":"' + b"x" * 200 + b'"}'
    headers = {"content-type": "application/json", "webhook-id": "d-1", "webhook-timestamp": "1763760000",
               "webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDDOmXDQs=", "host": "hooks.example.com"}
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            status, _, _ = await pool.post(url, content=body, headers=headers)
            assert status == 200

    await asyncio.gather(*(worker() for _ in range(concurrency)))  # warm-up: connections opened
    left = requests
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await pool.aclose()
    return cpu, wall


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = multiprocessing.get_context("fork").Process(target=_serve, args=(sock,), daemon=True)
    server.start()
    sock.close()
    try:
        cpu, wall = asyncio.run(_run(port, requests, concurrency))
    finally:
        server.terminate()
        server.join()
    load = os.getloadavg()[0]
    print(f"{requests} posts, {concurrency} in flight: {cpu / requests * 1e6:.0f} us CPU per post, "
          f"{requests / wall:,.0f} posts/s (load average {load:.2f})")


if __name__ == "__main__":
    main()
