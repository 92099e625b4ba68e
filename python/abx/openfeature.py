"""An OpenFeature provider over ``abx.Client`` (``pip install "abx[openfeature]"``).

    from openfeature import api
    from abx.openfeature import AbxProvider

    api.set_provider(AbxProvider(abx.Client(url, server_key, public_key=key)))
    client = api.get_client()
    client.get_boolean_value("new_checkout", False, EvaluationContext("user-123", {"country": "DE"}))

- Flags resolve through every typed resolver; a value of another JSON type than the one asked
  for is ``TYPE_MISMATCH`` with the default. Experiments resolve too: the string resolver
  gives the variant's key, the object resolver its configuration.
- ``targeting_key`` is the unit: it becomes the attribute ``unit_attribute`` (``user_id`` by
  default), beside the context's other attributes.
- ``track(name, context, TrackingEventDetails(value, attributes))`` records an abx metric
  event of type ``name`` for the targeting key (value 1 when none is given).
- A new snapshot emits ``PROVIDER_CONFIGURATION_CHANGED``; the first one, when the client had
  none at start, ``PROVIDER_READY``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, TypeVar, Union

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode, ProviderNotReadyError
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata
from openfeature.track import TrackingEventDetails

from .client import NOT_LOADED, UNKNOWN, Client
from .errors import AbxError

T = TypeVar("T")

_FLAG_REASONS = {
    "rule": Reason.TARGETING_MATCH,
    "experiment": Reason.SPLIT,
    "default": Reason.DEFAULT,
    "disabled": Reason.DISABLED,
}
_EXPERIMENT_REASONS = {
    "assigned": Reason.SPLIT,
    "forced": Reason.TARGETING_MATCH,
    "shipped": Reason.STATIC,
    "not_running": Reason.DISABLED,
}


def _is(kind: type, value: Any) -> bool:
    """JSON types as OpenFeature's resolvers mean them: booleans are not integers, and an
    integer is also a float."""
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    return isinstance(value, (dict, list))


class AbxProvider(AbstractProvider):
    def __init__(self, client: Client, *, unit_attribute: str = "user_id") -> None:
        super().__init__()
        self.client = client
        self.unit_attribute = unit_attribute
        self._was_ready = client.ready
        client.on_snapshot(self._snapshot_changed)

    def get_metadata(self) -> Metadata:
        return Metadata(name="abx")

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        if not self.client.ready:
            # The SDK marks the provider not ready; `_snapshot_changed` emits READY later.
            raise ProviderNotReadyError("abx has no snapshot yet")

    def shutdown(self) -> None:
        self.client.close()

    def _snapshot_changed(self, version: int) -> None:
        details = ProviderEventDetails(message=f"abx snapshot {version}", metadata={"snapshot_version": version})
        if self._was_ready:
            self.emit_provider_configuration_changed(details)
        else:
            self._was_ready = True
            self.emit_provider_ready(details)

    def _context(self, context: Optional[EvaluationContext]) -> dict[str, Any]:
        if context is None:
            return {}
        attributes = dict(context.attributes)
        if context.targeting_key is not None:
            attributes[self.unit_attribute] = context.targeting_key
        return attributes

    def _resolve(
        self, kind: type, key: str, default: T, context: Optional[EvaluationContext]
    ) -> FlagResolutionDetails[T]:
        attributes = self._context(context)
        detail = self.client.flag_detail(key, attributes, default)
        if detail.reason == NOT_LOADED:
            return self._error(default, ErrorCode.PROVIDER_NOT_READY, "abx has no snapshot yet")
        if detail.reason != UNKNOWN:
            if not _is(kind, detail.value):
                return self._error(default, ErrorCode.TYPE_MISMATCH, f"flag {key!r} is {type(detail.value).__name__}")
            value = float(detail.value) if kind is float else detail.value
            return FlagResolutionDetails(
                value=value,
                reason=_FLAG_REASONS.get(detail.reason, Reason.UNKNOWN),
                variant=detail.variant,
                flag_metadata=self._metadata(detail.reason),
            )
        # Not a flag: an experiment, whose variant key is a string and config an object.
        assignment = self.client.assign(key, attributes)
        if assignment.reason == UNKNOWN:
            return self._error(default, ErrorCode.FLAG_NOT_FOUND, f"no flag or experiment {key!r}")
        if kind not in (str, dict):
            return self._error(default, ErrorCode.TYPE_MISMATCH, f"{key!r} is an experiment: resolve it as a string or an object")
        metadata = self._metadata(assignment.reason)
        if assignment.variant is None:
            return FlagResolutionDetails(value=default, reason=_EXPERIMENT_REASONS.get(assignment.reason, Reason.DEFAULT), flag_metadata=metadata)
        value = assignment.variant if kind is str else assignment.config
        if kind is dict and not _is(dict, value):
            return self._error(default, ErrorCode.TYPE_MISMATCH, f"the config of {key!r} is not an object")
        return FlagResolutionDetails(
            value=value,
            reason=_EXPERIMENT_REASONS.get(assignment.reason, Reason.DEFAULT),
            variant=assignment.variant,
            flag_metadata=metadata,
        )

    def _metadata(self, reason: str) -> dict[str, Union[str, int]]:
        return {"abx_reason": reason, "snapshot_version": self.client.snapshot_version or 0}

    @staticmethod
    def _error(default: T, code: ErrorCode, message: str) -> FlagResolutionDetails[T]:
        return FlagResolutionDetails(value=default, reason=Reason.ERROR, error_code=code, error_message=message)

    def resolve_boolean_details(
        self, flag_key: str, default_value: bool, evaluation_context: Optional[EvaluationContext] = None
    ) -> FlagResolutionDetails[bool]:
        return self._resolve(bool, flag_key, default_value, evaluation_context)

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: Optional[EvaluationContext] = None
    ) -> FlagResolutionDetails[str]:
        return self._resolve(str, flag_key, default_value, evaluation_context)

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: Optional[EvaluationContext] = None
    ) -> FlagResolutionDetails[int]:
        return self._resolve(int, flag_key, default_value, evaluation_context)

    def resolve_float_details(
        self, flag_key: str, default_value: float, evaluation_context: Optional[EvaluationContext] = None
    ) -> FlagResolutionDetails[float]:
        return self._resolve(float, flag_key, default_value, evaluation_context)

    def resolve_object_details(  # type: ignore[override]
        self,
        flag_key: str,
        default_value: Union[Mapping[str, Any], list[Any]],
        evaluation_context: Optional[EvaluationContext] = None,
    ) -> FlagResolutionDetails[Union[Mapping[str, Any], list[Any]]]:
        return self._resolve(dict, flag_key, default_value, evaluation_context)

    def track(
        self,
        tracking_event_name: str,
        evaluation_context: Optional[EvaluationContext] = None,
        tracking_event_details: Optional[TrackingEventDetails] = None,
    ) -> None:
        unit = evaluation_context.targeting_key if evaluation_context else None
        value = tracking_event_details.value if tracking_event_details and tracking_event_details.value is not None else 1.0
        properties = tracking_event_details.attributes if tracking_event_details else None
        try:
            if unit is None:
                raise AbxError("invalid_event", "track() needs a targeting key: it is the unit")
            self.client.track(unit, tracking_event_name, value, properties, unit_attribute=self.unit_attribute)
        except AbxError as error:
            # OpenFeature's track never raises into the application.
            self.client._error(error)
