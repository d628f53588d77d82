"""`spec.tracking`: where a resource's stage runs are logged for experiment tracking (MLflow).

The tracking server itself is configured once, outside any resource (the chart's `tracking.uri`,
`lmforge run --tracking-uri` or `$MLFLOW_TRACKING_URI`); a resource only chooses the experiment, adds
tags, or opts out. Changing this block never re-runs a stage: it is left out of the run identity.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from lmforge.api.meta import ApiModel

DEFAULT_EXPERIMENT = "lmforge"
"""Experiment of runs whose resource names none (suffixed `/<namespace>` outside `default`)."""


class RegistryAlias(StrEnum):
    """Aliases a ModelRelease's versions carry in the model registry (MLflow), set by the operator (or
    `lmforge run`) from the release's status: see `release_aliases` in lmforge/operator/reconcile/serving.py."""

    CHAMPION = "champion"
    """The version serving: the stable one while a candidate is smoke-tested beside it."""
    CHALLENGER = "challenger"
    """A candidate being smoke-tested beside the version serving; removed on promotion or rollback."""


class Tracking(ApiModel):
    """Experiment tracking of this resource's stage runs."""

    enabled: bool = True
    """Log this resource's runs when a tracking server is configured; false switches it off."""
    experiment: str | None = Field(default=None, min_length=1, max_length=256)
    """MLflow experiment of its runs; default `lmforge` (`lmforge/<namespace>` outside `default`), so
    one pipeline's runs sit side by side."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Extra tags on every run (and, for a ModelRelease, on its registered model version)."""
    registered_model: str | None = Field(default=None, min_length=1, max_length=256)
    """ModelRelease only: the registered model its model becomes a version of; default the release's
    name."""
