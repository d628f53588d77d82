"""LMForge's API: the pydantic models of the five kinds and the stage contract.

This package is the one source of truth for the schema: CRDs, validation messages and docs are
generated from it. It imports nothing else of LMForge.
"""

from lmforge.api.alignment import AlignmentJob, AlignmentJobSpec, AlignmentMethod
from lmforge.api.contract import ProgressRecord, RecordType, StageName, StageSpec
from lmforge.api.dataset import Dataset, DatasetSpec
from lmforge.api.evalsuite import EvalSuite, EvalSuiteSpec, Threshold, parse_threshold
from lmforge.api.kinds import KINDS, ORDER, KindInfo, Reference, Resource, key, references
from lmforge.api.meta import (
    API_VERSION,
    GROUP,
    VERSION,
    Condition,
    ConditionStatus,
    ConditionType,
    Phase,
    Progress,
    Reason,
    Status,
)
from lmforge.api.pretrain import PretrainJob, PretrainJobSpec
from lmforge.api.release import ModelRelease, ModelReleaseSpec

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "ORDER",
    "VERSION",
    "AlignmentJob",
    "AlignmentJobSpec",
    "AlignmentMethod",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "Dataset",
    "DatasetSpec",
    "EvalSuite",
    "EvalSuiteSpec",
    "KindInfo",
    "ModelRelease",
    "ModelReleaseSpec",
    "Phase",
    "PretrainJob",
    "PretrainJobSpec",
    "Progress",
    "ProgressRecord",
    "Reason",
    "RecordType",
    "Reference",
    "Resource",
    "StageName",
    "StageSpec",
    "Status",
    "Threshold",
    "key",
    "parse_threshold",
    "references",
]
