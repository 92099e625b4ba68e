"""The event queue: exposures and metric events on their way to ``POST /api/v1/events``.

- Every event gets its UUID ``event_id`` when it is queued and keeps it through retries, so
  the origin stores it once however often it is sent.
- One background thread sends batches (at most ``batch_size`` events) every
  ``flush_interval`` seconds, or at once when a batch is full or a flush is asked for.
- Network errors, 408, 429 and 5xx answers are retried with exponential backoff (or after
  the server's ``Retry-After``) without limit: the batch stays at the head of the queue.
  Other 4xx answers mean the batch can never be taken; it is dropped, counted in
  ``rejected`` and reported. Events a 207 answer refuses one by one are counted the same way.
- The queue is bounded (``max_queue``): when it is full a new event is dropped and counted in
  ``dropped`` (reported once per run of drops), rather than growing memory without bound
  while the origin is down. The events already queued keep their order and are sent first.
"""

from __future__ import annotations

import email.utils
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from typing import Any, Callable, Optional

from .errors import AbxError

# A response's status and Retry-After header; status 0 is a network error.
Response = tuple[int, Optional[str], bytes]
Transport = Callable[[bytes], Response]

_MAX_BACKOFF = 30.0


def http_transport(url: str, sdk_key: str, timeout: float) -> Transport:
    """Posts a JSON body to the origin's event route with the key as a bearer token."""

    def send(body: bytes) -> Response:
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"authorization": f"Bearer {sdk_key}", "content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.headers.get("retry-after"), response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("retry-after"), error.read()
        except (OSError, ValueError):
            return 0, None, b""

    return send


def retry_after_seconds(value: Optional[str], now: float) -> Optional[float]:
    """Retry-After as seconds from ``now``: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _retryable(status: int) -> bool:
    return status == 0 or status == 408 or status == 429 or status >= 500


class EventQueue:
    def __init__(
        self,
        transport: Transport,
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        on_error: Callable[[AbxError], None],
        sleep: Callable[[threading.Event, float], bool] = lambda stop, s: stop.wait(s),
    ) -> None:
        if max_queue < 1 or batch_size < 1 or batch_size > 10_000:
            raise ValueError("max_queue must be positive and batch_size within 1..10000")
        self._transport = transport
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._on_error = on_error
        self._sleep = sleep
        self.stats = {"sent": 0, "dropped": 0, "rejected": 0, "retries": 0}
        self._reset()

    def _reset(self) -> None:
        """Fresh state for a new process: locks and threads do not survive a fork."""
        self._lock = threading.Condition()
        self._pending: deque[tuple[str, bytes]] = deque()
        # Events taken by the sender and not yet settled, for `flush` to wait on.
        self._in_flight = 0
        self._flush_wanted = False
        self._stop = threading.Event()
        self._closing = False
        self._dropping = False
        self._thread: Optional[threading.Thread] = None

    def after_fork_in_child(self) -> None:
        """The parent process still owns (and sends) the events it queued; the child starts
        empty, with its own sender thread on first use."""
        self._reset()

    def enqueue(self, event: dict[str, Any]) -> bool:
        """Queues an event (which must have its ``event_id``); False when it was dropped."""
        body = json.dumps(event, separators=(",", ":")).encode()
        with self._lock:
            if self._closing or len(self._pending) + self._in_flight >= self._max_queue:
                self.stats["dropped"] += 1
                dropped, first_drop = True, not self._dropping
                self._dropping = True
            else:
                self._pending.append((event["event_id"], body))
                dropped = first_drop = self._dropping = False
                if len(self._pending) >= self._batch_size:
                    self._lock.notify_all()
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._run, name="abx-events", daemon=True)
                self._thread.start()
        # Reported once per run of drops, not per event: an outage under load would
        # otherwise log once for every event.
        if first_drop:
            self._on_error(
                AbxError("events_dropped", f"the event queue is full ({self._max_queue}): dropping events, counted in stats")
            )
        return not dropped

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending) + self._in_flight

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Sends everything queued now and waits until it is settled (sent, or refused for
        good). Returns False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flush_wanted = True
            self._lock.notify_all()
            while self._pending or self._in_flight:
                if self._thread is None:
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(remaining)
            return True

    def close(self, timeout: Optional[float] = 5.0) -> bool:
        """Refuses new events, sends what is queued (for at most ``timeout`` seconds) and
        stops the sender. Returns whether everything was settled."""
        with self._lock:
            self._closing = True
        settled = self.flush(timeout)
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        return settled

    def _take(self) -> list[tuple[str, bytes]]:
        """Waits for a batch to send; empty when stopping."""
        with self._lock:
            deadline = time.monotonic() + self._flush_interval
            while not self._stop.is_set():
                full = len(self._pending) >= self._batch_size
                due = time.monotonic() >= deadline or self._flush_wanted or self._closing
                if self._pending and (full or due):
                    break
                if not self._pending:
                    self._flush_wanted = False
                    deadline = time.monotonic() + self._flush_interval
                self._lock.wait(max(0.0, deadline - time.monotonic()) if self._pending else None)
            else:
                return []
            batch = [self._pending.popleft() for _ in range(min(self._batch_size, len(self._pending)))]
            self._in_flight = len(batch)
            return batch

    def _settle(self) -> None:
        with self._lock:
            self._in_flight = 0
            if not self._pending:
                self._flush_wanted = False
            self._lock.notify_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._take()
            if not batch:
                return
            body = b'{"events":[' + b",".join(b for _, b in batch) + b"]}"
            failures = 0
            while True:
                status, retry_after, answer = self._transport(body)
                if 200 <= status < 300:
                    refused = _refused_count(status, answer)
                    self.stats["sent"] += len(batch) - refused
                    if refused:
                        self.stats["rejected"] += refused
                        self._on_error(AbxError("events_rejected", f"the origin refused {refused} of {len(batch)} events: {answer[:500]!r}"))
                    break
                if not _retryable(status):
                    self.stats["rejected"] += len(batch)
                    self._on_error(AbxError("events_rejected", f"the origin refused {len(batch)} events with status {status}: {answer[:500]!r}"))
                    break
                failures += 1
                self.stats["retries"] += 1
                delay = retry_after_seconds(retry_after, time.time())
                if delay is None:
                    delay = min(_MAX_BACKOFF, 0.5 * 2 ** min(failures - 1, 10))
                    delay *= 0.5 + random.random() / 2
                # A stopped queue is one whose `close` gave up waiting: keep the batch
                # unsent rather than block the process's exit.
                if self._sleep(self._stop, min(delay, 300.0)):
                    with self._lock:
                        self._pending.extendleft(reversed(batch))
                        self._in_flight = 0
                        self._lock.notify_all()
                    return
            self._settle()


def _refused_count(status: int, answer: bytes) -> int:
    if status != 207:
        return 0
    try:
        return len(json.loads(answer).get("rejected", []))
    except (ValueError, AttributeError):
        return 0
