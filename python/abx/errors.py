"""The package's one exception type."""

from __future__ import annotations


class AbxError(Exception):
    """An abx failure with a stable machine-readable ``code``.

    Snapshot refusals carry abx-core's codes (``bad_signature``, ``unsigned``, ``truncated``,
    ... as listed in docs/snapshot-format.md), the same in every runtime; the client adds
    ``fetch_failed``, ``events_rejected``, ``events_dropped``, ``events_unsent``,
    ``invalid_event``, ``not_loaded``,
    ``bad_public_key`` and ``cache_unreadable``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
