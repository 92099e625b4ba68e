"""``Client``: evaluates experiments and flags locally from a signed snapshot, keeps the
snapshot fresh, and logs exposures and metric events through the event queue.

A client never raises into the request that evaluates: without a usable snapshot every
experiment answers no variant (reason ``not_loaded``) and every flag the caller's default,
and failures go to ``on_error`` (by default, the ``abx`` logger).
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import http.client
import json
import logging
import math
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

from . import _abx
from .errors import AbxError
from .events import EventQueue, http_transport
from ._abx import Assignment, FlagDetail
from .results import Evaluation

log = logging.getLogger("abx")

PublicKey = Union[str, bytes]
# A mapping of attributes, or an `abx.Context` prepared from one (converted once, for the
# many evaluations of one request).
Context = Union[Mapping[str, Any], _abx.Context, None]

# The reasons of answers that no snapshot gave (the extension answers with the same).
NOT_LOADED = "not_loaded"
UNKNOWN = "unknown_key"
# The origin's change stream sends a comment every 15 s; a read this long without one means
# the connection is dead.
STREAM_READ_TIMEOUT = 45.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _decode_keys(public_key: Union[PublicKey, Sequence[PublicKey], None]) -> Optional[list[bytes]]:
    """One key, or several while the origin's signing key is rotated (docs/api.md)."""
    if public_key is None:
        return None
    keys = [public_key] if isinstance(public_key, (str, bytes)) else list(public_key)
    decoded = []
    for key in keys:
        if isinstance(key, bytes) and len(key) == 32:
            decoded.append(key)
        elif isinstance(key, str) and len(key) == 64:
            try:
                decoded.append(bytes.fromhex(key))
            except ValueError:
                raise AbxError("bad_public_key", "a public key must be 64 hex digits or 32 bytes") from None
        else:
            raise AbxError("bad_public_key", "a public key must be 64 hex digits or 32 bytes")
    if not decoded:
        raise AbxError("bad_public_key", "public_key lists no key")
    return decoded


def _attributes(context: Context) -> Union[dict[str, Any], _abx.Context, None]:
    if context is None or type(context) is dict or type(context) is _abx.Context:
        return context  # type: ignore[return-value]
    return dict(context)  # type: ignore[arg-type]


def _default_cache_path(base_url: str) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "abx"
    name = hashlib.sha256(base_url.encode()).hexdigest()[:16]
    return root / f"snapshot-{name}.abxs"


def _report(error: AbxError) -> None:
    log.warning("%s", error)


_live_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for client in list(_live_clients):
        client.close(timeout=2.0)


def _after_fork_in_child() -> None:
    for client in list(_live_clients):
        client._after_fork_in_child()


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Client(_abx.ClientCore):
    """abx for one origin.

    ``Client(base_url, sdk_key, public_key=...)`` starts from the snapshot cached on disk (if
    any), fetches the current one (waiting at most ``initial_timeout`` seconds when there is
    no cached one), then follows the origin's change stream, polling every
    ``refresh_interval`` seconds whenever the stream is down. Give ``public_key`` (64 hex
    digits, from ``GET /api/v1/snapshot/key``; a list during a key rotation) so that only
    snapshots the origin signed are used.

    Use a server key for backends: it reads the full snapshot, including QA overrides.
    """

    def __init__(
        self,
        base_url: str,
        sdk_key: str,
        public_key: Union[PublicKey, Sequence[PublicKey], None] = None,
        *,
        cache_path: Union[str, os.PathLike[str], None] = None,
        cache: bool = True,
        stream: bool = True,
        refresh_interval: float = 60.0,
        initial_timeout: float = 3.0,
        timeout: float = 10.0,
        events: bool = True,
        max_queue: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        on_error: Optional[Callable[[AbxError], None]] = None,
    ) -> None:
        self._public_keys = _decode_keys(public_key)
        self._on_error = on_error or _report
        self._base_url = base_url.rstrip("/")
        self._sdk_key = sdk_key
        self._timeout = timeout
        self._stream = stream
        self._refresh_interval = refresh_interval
        self._cache_path = (Path(cache_path) if cache_path else _default_cache_path(self._base_url)) if cache else None
        self._engine = None
        self._etag: Optional[str] = None
        self._listeners: list[Callable[[int], None]] = []
        self._warned_not_loaded = False
        self._queue: Optional[EventQueue] = None
        if events and base_url:
            transport = http_transport(f"{self._base_url}/api/v1/events", sdk_key, timeout)
            self._queue = EventQueue(
                transport, max_queue=max_queue, batch_size=batch_size, flush_interval=flush_interval, on_error=self._error
            )
        self._logs_exposures = self._queue is not None
        self._reset_process_state()
        _live_clients.add(self)
        if not base_url:
            return
        cached = self._load_cached()
        self._start_follower()
        if not cached:
            self._first_load.wait(initial_timeout)
            if self._engine is None:
                self._not_loaded()

    @classmethod
    def from_snapshot(
        cls,
        snapshot: bytes,
        public_key: Union[PublicKey, Sequence[PublicKey], None] = None,
        *,
        on_error: Optional[Callable[[AbxError], None]] = None,
    ) -> "Client":
        """A client over snapshot bytes, with no origin: no refresh and no events. Raises
        ``AbxError`` with the snapshot's error code when the bytes are refused."""
        client = cls("", "", public_key, cache=False, events=False, on_error=on_error)
        client._engine = client._load(snapshot)
        return client

    # ----------------------------------------------------------------- process state

    def _reset_process_state(self) -> None:
        self._lock = threading.Lock()
        self._forget_exposures()
        self._first_load = threading.Event()
        self._stop = threading.Event()
        self._follower: Optional[threading.Thread] = None
        self._stream_socket: Optional[socket.socket] = None
        self._closed = False

    def _after_fork_in_child(self) -> None:
        # Threads do not survive a fork: the child (a gunicorn or uwsgi worker) follows the
        # origin and sends events with threads of its own, and forgets the parent's queue.
        running = self._follower is not None
        self._reset_process_state()
        self._first_load.set()
        if self._queue is not None:
            self._queue.after_fork_in_child()
        if running:
            self._start_follower()

    def _error(self, error: AbxError) -> None:
        try:
            self._on_error(error)
        except Exception:  # noqa: BLE001 - a failing callback must not break evaluation
            log.exception("abx on_error callback failed")

    # ------------------------------------------------------------------ snapshots

    @property
    def snapshot_version(self) -> Optional[int]:
        """The version of the snapshot in use, or None before one is loaded."""
        engine = self._engine
        return None if engine is None else engine.version

    @property
    def ready(self) -> bool:
        return self._engine is not None

    def on_snapshot(self, listener: Callable[[int], None]) -> None:
        """Calls ``listener(version)`` (on the refresh thread) after each new snapshot."""
        self._listeners.append(listener)

    def _load(self, data: bytes) -> _abx.Engine:
        try:
            return _abx.Engine(bytes(data), self._public_keys)
        except _abx.SnapshotError as error:
            code, message = error.args
            raise AbxError(code, message) from None

    def _take(self, data: bytes, etag: Optional[str]) -> bool:
        """Swaps in verified snapshot bytes unless they are older than the current ones."""
        try:
            engine = self._load(data)
        except AbxError as error:
            self._error(error)
            return False
        with self._lock:
            current = self._engine
            # A stale cache or CDN must not roll assignments back.
            if current is not None and engine.version < current.version:
                return False
            self._engine = engine
            self._etag = etag
        self._first_load.set()
        if current is None or engine.version != current.version:
            for listener in list(self._listeners):
                try:
                    listener(engine.version)
                except Exception:  # noqa: BLE001
                    log.exception("abx snapshot listener failed")
        return True

    def _load_cached(self) -> bool:
        path = self._cache_path
        if path is None or not path.exists():
            return False
        try:
            data = path.read_bytes()
            etag_path = path.with_suffix(".etag")
            etag = etag_path.read_text() if etag_path.exists() else None
        except OSError as error:
            self._error(AbxError("cache_unreadable", f"ignoring the cached snapshot {path}: {error}"))
            return False
        return self._take(data, etag)

    def _store_cached(self, data: bytes, etag: Optional[str]) -> None:
        path = self._cache_path
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Written aside and renamed, so that a crash never leaves half a snapshot.
            partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            partial.write_bytes(data)
            os.replace(partial, path)
            etag_path = path.with_suffix(".etag")
            if etag:
                etag_path.write_text(etag)
            elif etag_path.exists():
                etag_path.unlink()
        except OSError as error:
            self._error(AbxError("cache_unwritable", f"cannot keep the snapshot in {path}: {error}"))

    def refresh(self) -> bool:
        """Fetches the snapshot if it changed (If-None-Match) and swaps it in. Returns
        whether a new snapshot was loaded; never raises."""
        headers = {"authorization": f"Bearer {self._sdk_key}"}
        if self._etag:
            headers["if-none-match"] = self._etag
        # Format 2 names the attributes that each experiment's exposures carry.
        request = urllib.request.Request(f"{self._base_url}/api/v1/snapshot?format=2", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                data = response.read()
                etag = response.headers.get("etag")
        except urllib.error.HTTPError as error:
            if error.code != 304:
                self._error(AbxError("fetch_failed", f"GET /api/v1/snapshot answered {error.code}"))
            return False
        except (OSError, ValueError) as error:
            self._error(AbxError("fetch_failed", f"cannot fetch the snapshot: {error}"))
            return False
        if not self._take(data, etag):
            return False
        self._store_cached(data, etag)
        return True

    def _start_follower(self) -> None:
        self._follower = threading.Thread(target=self._follow, name="abx-snapshot", daemon=True)
        self._follower.start()

    def _follow(self) -> None:
        """Keeps the snapshot fresh: the change stream when it is up, polling when not."""
        failures = 0
        while not self._stop.is_set():
            self.refresh()
            if self._stream:
                if self._listen():
                    failures = 0
                    continue
                failures += 1
            # The stream is down (or off): poll, retrying the stream with backoff.
            wait = self._refresh_interval if not self._stream else min(self._refresh_interval, 2.0 ** min(failures, 6))
            if self._stop.wait(wait):
                return

    def _listen(self) -> bool:
        """Reads the change stream until it ends; True when it was connected for a while.

        It uses `http.client` directly (not urllib) to hold the socket, which `close` shuts
        down to end a blocked read at once: the origin caps streams per client address."""
        parts = urllib.parse.urlsplit(self._base_url)
        connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = connection_class(parts.netloc, timeout=STREAM_READ_TIMEOUT)
        started = time.monotonic()
        event = None
        try:
            connection.request(
                "GET",
                # The format the snapshot is fetched in, so that the announced ETags are its own.
                f"{parts.path}/api/v1/snapshot/stream?format=2",
                headers={"authorization": f"Bearer {self._sdk_key}", "accept": "text/event-stream"},
            )
            self._stream_socket = connection.sock
            if self._stop.is_set():
                return False
            response = connection.getresponse()
            if response.status != 200:
                self._error(AbxError("fetch_failed", f"GET /api/v1/snapshot/stream answered {response.status}"))
                return False
            for raw in response:
                if self._stop.is_set():
                    break
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "snapshot":
                    try:
                        announced = json.loads(line[5:]).get("etag")
                    except (ValueError, AttributeError):
                        announced = None
                    if announced is None or announced != self._etag:
                        self.refresh()
                elif line == "":
                    event = None
        except (OSError, ValueError, http.client.HTTPException):
            pass
        finally:
            self._stream_socket = None
            connection.close()
        return time.monotonic() - started > 5.0

    # ------------------------------------------------------------------ evaluation

    def _not_loaded(self) -> None:
        if not self._warned_not_loaded:
            self._warned_not_loaded = True
            self._error(AbxError(NOT_LOADED, "no snapshot is loaded: serving defaults until one loads"))

    # `assign(experiment_key, context=None, *, now_ms=None)` and `flag_detail(key,
    # context=None, default=None, *, now_ms=None)` are `_abx.ClientCore`'s: the calls of every
    # request, made in Rust (python/src/client.rs), with the exposure memory there too.

    def flag(self, key: str, context: Context = None, default: Any = None, *, now_ms: Optional[int] = None) -> Any:
        """A flag's value, or ``default`` when it cannot be evaluated."""
        return self.flag_detail(key, context, default, now_ms=now_ms).value

    def evaluate(
        self, context: Context = None, *, now_ms: Optional[int] = None, log_exposures: bool = False
    ) -> Evaluation:
        """Every experiment and flag. Evaluating everything does not mean the unit saw every
        variant, so exposures are logged only with ``log_exposures=True``."""
        engine = self._engine
        if engine is None:
            self._not_loaded()
            return Evaluation(None, {}, {})
        logs = log_exposures and self._queue is not None
        attributes = _attributes(context)
        experiments, flags = engine.evaluate(attributes, _now_ms() if now_ms is None else now_ms, logs)
        if logs:
            for assignment in experiments.values():
                exposure = assignment._exposure
                if exposure is not None:
                    self._expose(exposure, assignment.variant, now_ms, attributes)
                # The unit's place in the experiment's holdout, logged as an exposure to the
                # holdout with its arm (`held` or `released`) as the variant.
                holdout = assignment._holdout_exposure
                if holdout is not None:
                    self._expose(holdout[0], holdout[1], now_ms)
        return Evaluation(engine.version, experiments, flags)

    # ------------------------------------------------------------------ events

    def _expose(
        self, exposure: tuple[str, str, str], variant: Optional[str], now_ms: Optional[int], context: Any = None
    ) -> None:
        if self._queue is not None and self._first_exposure(*exposure):
            self._record_exposure(exposure, variant, now_ms, context)

    def _record_exposure(
        self, exposure: tuple[str, str, str], variant: Optional[str], now_ms: Optional[int], context: Any = None
    ) -> None:
        """Queues an exposure this process has not logged before (`ClientCore` calls it). An
        exposure to an experiment comes with the context it was evaluated with, and carries the
        attributes the experiment's results are broken down by (format 2 snapshots); one to a
        holdout comes without."""
        experiment_id, unit_attribute, unit = exposure
        event = {
            "kind": "exposure",
            "unit": unit,
            "unit_attribute": unit_attribute,
            "experiment_id": experiment_id,
            "variant": variant,
            "timestamp": _now_ms() if now_ms is None else now_ms,
        }
        engine = self._engine
        if context is not None and engine is not None:
            try:
                attributes = engine._exposure_attributes(experiment_id, context)
            except Exception as error:  # noqa: BLE001 - a context that fails to read again
                # costs the exposure its attributes, reported, not the exposure.
                self._error(AbxError("invalid_context", f"cannot read the exposure's attributes: {error}"))
                attributes = None
            if attributes:
                event["attributes"] = attributes
        self._record(event)

    def track(
        self,
        unit: Union[str, int],
        event_type: str,
        value: float = 1.0,
        properties: Optional[Mapping[str, Any]] = None,
        *,
        unit_attribute: str = "user_id",
        timestamp_ms: Optional[int] = None,
    ) -> Optional[str]:
        """Records a metric event for ``unit`` (the value of ``unit_attribute``). Returns the
        event's id, or None when there is no event queue or it was full. Raises
        ``AbxError("invalid_event")`` for an event the origin could never take."""
        if isinstance(unit, bool) or not isinstance(unit, (str, int)) or unit == "":
            raise AbxError("invalid_event", "the unit must be a non-empty string or an integer")
        if not isinstance(event_type, str) or not event_type:
            raise AbxError("invalid_event", "the event type must be a non-empty string")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise AbxError("invalid_event", "the value must be a finite number")
        event: dict[str, Any] = {
            "kind": "metric",
            "unit": str(unit),
            "unit_attribute": unit_attribute,
            "event_type": event_type,
            "value": value,
            "timestamp": _now_ms() if timestamp_ms is None else timestamp_ms,
        }
        if properties:
            event["properties"] = dict(properties)
        return self._record(event)

    def _record(self, event: dict[str, Any]) -> Optional[str]:
        if self._queue is None:
            return None
        event["event_id"] = str(uuid.uuid4())
        return event["event_id"] if self._queue.enqueue(event) else None

    @property
    def event_stats(self) -> dict[str, int]:
        """Counts of events ``sent``, ``dropped`` (queue full), ``rejected`` (refused by the
        origin) and send ``retries``, plus ``queued`` now."""
        if self._queue is None:
            return {"sent": 0, "dropped": 0, "rejected": 0, "retries": 0, "queued": 0}
        return {**self._queue.stats, "queued": len(self._queue)}

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Sends queued events now and waits until they are settled."""
        return True if self._queue is None else self._queue.flush(timeout)

    async def flush_async(self, timeout: Optional[float] = None) -> bool:
        """``flush`` without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, self.flush, timeout)

    def close(self, timeout: Optional[float] = 5.0) -> bool:
        """Stops following the origin and sends what is queued (for at most ``timeout``
        seconds; what is still unsent then is reported as ``events_unsent`` and lost with the
        process). Called at exit for every client still open."""
        if self._closed:
            return True
        self._closed = True
        self._stop.set()
        stream = self._stream_socket
        if stream is not None:
            try:
                stream.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        _live_clients.discard(self)
        if self._queue is None or self._queue.close(timeout):
            return True
        unsent = len(self._queue)
        self._error(AbxError("events_unsent", f"{unsent} events were not sent within close()'s {timeout} s"))
        return False

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
