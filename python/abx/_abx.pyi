# Types of the native module (python/src/lib.rs). Use the `abx` package, which re-exports
# `Context`, `Assignment` and `FlagDetail`.
from collections.abc import Iterator, Mapping
from typing import Any, Optional, TypeVar

_T = TypeVar("_T")

class SnapshotError(ValueError): ...

class Context:
    """Attributes converted once, for the many evaluations of one request."""

    def __init__(self, attributes: dict[str, Any]) -> None: ...
    def __len__(self) -> int: ...

_Attributes = Optional[dict[str, Any] | Context]
_Exposure = tuple[str, str, str]

class Assignment:
    """One experiment's answer for one context.

    ``variant`` is the variant's key, or ``None`` when the unit gets none; ``reason`` says
    why (docs/assignment.md: ``assigned``, ``forced``, ``shipped``, ``not_running``,
    ``missing_unit``, ``not_targeted``, ``holdout``, ``not_in_traffic``; the client adds
    ``not_loaded`` before any snapshot and ``unknown_key``). ``config`` is the variant's
    configuration, parsed afresh at each read (so every reader has its own; keep it in a
    variable to read it twice). Answers without an exposure to log are shared between
    calls: compare them with ``==``, not ``is``.
    """

    variant: Optional[str]
    reason: str
    experiment_id: Optional[str]
    config_json: Optional[str]
    def __init__(
        self, variant: Optional[str], config_json: Optional[str], reason: str, experiment_id: Optional[str] = None
    ) -> None: ...
    @property
    def config(self) -> Any: ...
    @property
    def _exposure(self) -> Optional[_Exposure]: ...
    @property
    def _holdout_exposure(self) -> Optional[tuple[_Exposure, str]]: ...

class FlagDetail:
    """One flag's answer: its ``value``, why (``rule``, ``experiment``, ``default``,
    ``disabled``; ``not_loaded``/``unknown_key`` when the caller's default is served), and
    the ``variant`` of the experiment that supplied the value, when one did."""

    reason: str
    variant: Optional[str]
    def __init__(self, value: Any, reason: str, variant: Optional[str] = None) -> None: ...
    @property
    def value(self) -> Any: ...
    @property
    def _exposure(self) -> Optional[_Exposure]: ...
    @property
    def _holdout_exposure(self) -> Optional[tuple[_Exposure, str]]: ...

class _LazyMapping:
    def __len__(self) -> int: ...
    def __contains__(self, key: object) -> bool: ...
    def __iter__(self) -> Iterator[str]: ...
    def keys(self) -> list[str]: ...

class Experiments(_LazyMapping):
    def __getitem__(self, key: str) -> Assignment: ...
    def values(self) -> list[Assignment]: ...
    def items(self) -> list[tuple[str, Assignment]]: ...
    def get(self, key: str, default: _T = ...) -> Assignment | _T: ...

class Flags(_LazyMapping):
    def __getitem__(self, key: str) -> FlagDetail: ...
    def values(self) -> list[FlagDetail]: ...
    def items(self) -> list[tuple[str, FlagDetail]]: ...
    def get(self, key: str, default: _T = ...) -> FlagDetail | _T: ...

class ClientCore:
    """The per-request calls of ``abx.Client``, in Rust (python/src/client.rs); the client
    subclasses it and supplies ``_not_loaded`` and ``_record_exposure``."""

    _engine: Optional[Engine]
    _logs_exposures: bool
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...
    def assign(
        self, experiment_key: str, context: Optional[Mapping[str, Any] | Context] = None, *, now_ms: Optional[int] = None
    ) -> Assignment:
        """One experiment for ``context``: ``Assignment(variant, config, reason)``. Logs the
        exposure the first time this process assigns this unit a variant of it."""
    def flag_detail(
        self,
        key: str,
        context: Optional[Mapping[str, Any] | Context] = None,
        default: Any = None,
        *,
        now_ms: Optional[int] = None,
    ) -> FlagDetail:
        """A flag's ``FlagDetail(value, reason, variant)``; ``variant`` is that of the
        experiment that supplied the value, when one did, and its exposure is logged when it
        assigned this unit, as is the unit's arm in the holdout it reached through the
        experiments the flag consulted."""
    def _first_exposure(self, experiment_id: str, unit_attribute: str, unit: str) -> bool: ...
    def _forget_exposures(self) -> None: ...
    def _call_cost(
        self, _experiment_key: str, _context: Optional[Mapping[str, Any] | Context] = None, *, now_ms: Optional[int] = None
    ) -> None: ...

class Engine:
    def __init__(self, snapshot: bytes, public_keys: Optional[list[bytes]] = None) -> None: ...
    @property
    def version(self) -> int: ...
    @property
    def published_at_ms(self) -> int: ...
    def assign(self, key: str, attributes: _Attributes, now_ms: int) -> Optional[Assignment]: ...
    def flag(self, key: str, attributes: _Attributes, now_ms: int) -> Optional[FlagDetail]: ...
    def evaluate(
        self, attributes: _Attributes, now_ms: int, holdout_exposures: bool = False
    ) -> tuple[Experiments, Flags]: ...
    def time_native(
        self, key: Optional[str], attributes: _Attributes, now_ms: int, iterations: int
    ) -> float: ...
    def _exposure_attributes(
        self, experiment_id: str, context: _Attributes
    ) -> Optional[dict[str, str | int | float | bool]]: ...
