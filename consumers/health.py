"""``/metrics``, ``/healthz`` and ``/readyz`` on one port, served from a thread.

* ``/healthz``: 200 while the poll loop has turned within ``stall_after`` seconds
  and, after the group took our partitions away (session lost), we got an
  assignment back within ``rejoin_after`` seconds. A consumer that cannot rejoin
  its group (seen when the group coordinator stays unreachable after a broker
  restart) is reported dead so that the orchestrator restarts it.
* ``/readyz``: 200 once the consumer has joined its group and received an
  assignment (possibly empty: more replicas than partitions is still ready)
  and its last poll reached the broker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumers.metrics import REGISTRY


class Health:
    def __init__(self, stall_after: float = 60.0, rejoin_after: float = 180.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_after = stall_after
        self.rejoin_after = rejoin_after
        self.clock = clock
        self.last_loop = clock()
        self.lost_since: float | None = None
        self.assigned = False
        self.connected = False
        self.stopping = False

    def tick(self) -> None:
        self.last_loop = self.clock()

    def on_assigned(self) -> None:
        self.assigned = True
        self.lost_since = None

    def on_lost(self) -> None:
        if self.lost_since is None:
            self.lost_since = self.clock()

    def problem(self) -> str | None:
        """Why the process should be restarted, or None while it is healthy."""
        now = self.clock()
        if now - self.last_loop >= self.stall_after:
            return f"poll loop stalled for {now - self.last_loop:.0f}s"
        if self.lost_since is not None and now - self.lost_since >= self.rejoin_after:
            return f"partitions lost {now - self.lost_since:.0f}s ago and the group was not rejoined"
        return None

    def alive(self) -> bool:
        return self.problem() is None

    def ready(self) -> bool:
        return self.assigned and self.connected and not self.stopping


class _Handler(BaseHTTPRequestHandler):
    health: Health

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            problem = self.health.problem()
            self._reply(503 if problem else 200, f"{problem or 'ok'}\n".encode())
        elif path == "/readyz":
            ok = self.health.ready()
            self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
        else:
            self._reply(404, b"not found\n")

    def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: probes every few seconds
        return


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # socketserver listens with 5; the HTTP stand-ins overflowed theirs (devstack/sinks.py)


class HealthServer:
    def __init__(self, health: Health, host: str, port: int) -> None:
        handler = type("Handler", (_Handler,), {"health": health})
        self.server = _Server((host, port), handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)

    def start(self) -> HealthServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
