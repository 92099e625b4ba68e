"""An in-process stand-in for the origin's snapshot and event routes, for tests of the client's
behaviour under failures the real origin cannot be made to show on demand (a scripted 503, a
publication at a chosen moment). The real origin is exercised by test_origin.py."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional


class FakeOrigin:
    def __init__(self, snapshot: bytes, key: str = "abx_server_test") -> None:
        self.key = key
        self.snapshot = snapshot
        self.version = 1
        self.changed = threading.Condition()
        self.events: list[dict] = []
        self.event_posts = 0
        # Answers for the next event posts, (status, headers, body); then 202.
        self.event_answers: list[tuple[int, dict[str, str], bytes]] = []
        self.snapshot_gets = 0
        self.fail_snapshots = False
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def authorized(self) -> bool:
                if self.headers.get("authorization") == f"Bearer {origin.key}":
                    return True
                self.answer(401, b'{"error":{"code":"unauthorized"}}')
                return False

            def answer(self, status: int, body: bytes, headers: Optional[dict[str, str]] = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                if not self.authorized():
                    return
                # The client asks for format 2 (docs/snapshot-format.md, "Versions").
                if self.path == "/api/v1/snapshot?format=2":
                    origin.snapshot_gets += 1
                    if origin.fail_snapshots:
                        self.answer(503, b"{}", {"retry-after": "1"})
                    elif self.headers.get("if-none-match") == origin.etag:
                        self.answer(304, b"")
                    else:
                        self.answer(200, origin.snapshot, {"etag": origin.etag})
                elif self.path == "/api/v1/snapshot/stream?format=2":
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.end_headers()
                    seen = None
                    while True:
                        with origin.changed:
                            while seen == origin.version:
                                origin.changed.wait()
                            seen = origin.version
                            data = json.dumps({"version": seen, "etag": origin.etag})
                        try:
                            self.wfile.write(f"event: snapshot\ndata: {data}\n\n".encode())
                            self.wfile.flush()
                        except OSError:
                            return
                else:
                    self.answer(404, b"{}")

            def do_POST(self) -> None:  # noqa: N802
                if not self.authorized():
                    return
                body = self.rfile.read(int(self.headers["content-length"]))
                origin.event_posts += 1
                if origin.event_answers:
                    status, headers, answer = origin.event_answers.pop(0)
                    self.answer(status, answer, headers)
                    return
                events = json.loads(body)["events"]
                origin.events.extend(events)
                self.answer(202, json.dumps({"accepted": len(events), "duplicates": 0}).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def etag(self) -> str:
        return f'"v{self.version}"'

    def publish(self, snapshot: bytes) -> None:
        with self.changed:
            self.snapshot = snapshot
            self.version += 1
            self.changed.notify_all()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self.changed:
            self.version += 1
            self.changed.notify_all()
