"""Everything evaluated for one context at once. An experiment's `Assignment` and a flag's
`FlagDetail` are made by the extension (`abx._abx`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Optional

from . import _abx

if TYPE_CHECKING:
    from ._abx import Assignment, FlagDetail

# The extension's lazy mappings implement the mapping protocol; registering them makes
# `isinstance(evaluation.experiments, Mapping)` true, as for a dict.
Mapping.register(_abx.Experiments)
Mapping.register(_abx.Flags)


class Evaluation:
    """Every experiment and flag for one context, from the snapshot ``snapshot_version``.
    ``experiments`` (key → ``Assignment``) and ``flags`` (key → ``FlagDetail``) are
    read-only mappings that build each answer when it is read."""

    __slots__ = ("snapshot_version", "experiments", "flags")

    def __init__(
        self,
        snapshot_version: Optional[int],
        experiments: Mapping[str, Assignment],
        flags: Mapping[str, FlagDetail],
    ) -> None:
        self.snapshot_version = snapshot_version
        self.experiments = experiments
        self.flags = flags

    def __repr__(self) -> str:
        return (
            f"Evaluation(snapshot_version={self.snapshot_version}, "
            f"{len(self.experiments)} experiments, {len(self.flags)} flags)"
        )
