"""Secrets of a stage pod as named table cases: which Secrets a run mounts (and from which field),
what is missing of them, and the API-key env the serve and evaluate stages read. No cluster."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from lmforge.api.contract import ProgressRecord, RecordType, StageName
from lmforge.operator.kube import build_children
from lmforge.operator.kube.secrets import SecretNeed, missing, secret_needs
from lmforge.operator.reconcile.types import ObservedRun, RunState, StageRun
from lmforge.operator.settings import Settings

from .conftest import SETTINGS, first_run, owner, parse

KEY = {"name": "api", "key": "token"}
TASKS = [{"name": "p", "type": "perplexity"}]


def _doc(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "lmforge.io/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}


def _served(doc: dict[str, Any]) -> StageRun:
    """The serve run of a release whose compress stage is done."""
    res = parse(doc)
    compress = first_run(res)
    done = ObservedRun(
        compress.name,
        compress.run_id,
        RunState.SUCCEEDED,
        StageName.COMPRESS,
        result=ProgressRecord(
            type=RecordType.RESULT, stage=StageName.COMPRESS, run_id="x", artifacts={"model": "s3://b/cm"}
        ),
    )
    return first_run(res, runs={compress.name: done})


DATASET = _doc("Dataset", {"sources": [{"name": "s", "uri": "s3://b/x", "license": "MIT"}]})
OWN_S3 = _doc(
    "Dataset",
    {
        "sources": [{"name": "s", "uri": "s3://b/x", "license": "MIT"}],
        "compute": {"s3CredentialsSecret": "own", "secretEnv": {"HF_TOKEN": {"name": "hf", "key": "token"}}},
    },
)
EVAL_URL = _doc("EvalSuite", {"endpoint": {"url": "http://m:8000/v1", "apiKeySecret": KEY}, "tasks": TASKS})
RELEASE = _doc("ModelRelease", {"modelRef": {"uri": "s3://b/m"}, "serving": {"apiKeySecret": KEY}})


@dataclass
class Case:
    name: str
    run: StageRun
    settings: Settings
    needs: list[SecretNeed]
    env: dict[str, Any] = field(default_factory=dict)
    """Expected `valueFrom` of env vars of the stage container."""


CASES = [
    Case(
        "operator-default-s3-secret",
        first_run(parse(DATASET)),
        SETTINGS,
        [SecretNeed("lmforge-s3", None, "the operator's S3 Secret (LMFORGE_S3_SECRET)")],
    ),
    Case("no-secret-configured-needs-nothing", first_run(parse(DATASET)), Settings(store="s3://b"), []),
    Case(
        "own-s3-secret-and-secret-env",
        first_run(parse(OWN_S3)),
        SETTINGS,
        [
            SecretNeed("own", None, "spec.compute.s3CredentialsSecret"),
            SecretNeed("hf", "token", "spec.compute.secretEnv.HF_TOKEN"),
        ],
        env={"HF_TOKEN": {"secretKeyRef": {"name": "hf", "key": "token"}}},
    ),
    Case(
        "eval-endpoint-api-key",
        first_run(parse(EVAL_URL)),
        Settings(store="s3://b"),
        [SecretNeed("api", "token", "spec.endpoint.apiKeySecret or the release's")],
        env={"LMFORGE_ENDPOINT_API_KEY": {"secretKeyRef": KEY}},
    ),
    Case(
        "serve-api-key",
        _served(RELEASE),
        Settings(store="s3://b"),
        [SecretNeed("api", "token", "spec.serving.apiKeySecret")],
        env={"VLLM_API_KEY": {"secretKeyRef": KEY}},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_secret_needs_and_env(case: Case) -> None:
    assert secret_needs(case.run, case.settings) == case.needs
    objs = build_children(case.run, owner(parse(DATASET)), case.settings)
    workload = next(o for o in objs if o["kind"] in ("Job", "Deployment"))
    container = workload["spec"]["template"]["spec"]["containers"][0]
    from_secrets = {e["name"]: e["valueFrom"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert from_secrets == case.env
    for init in workload["spec"]["template"]["spec"].get("initContainers", []):
        # The serving pod's model download gets the store's credentials, never the API key.
        assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in init["env"])


def test_compress_stage_of_a_keyed_release_gets_no_api_key() -> None:
    assert secret_needs(first_run(parse(RELEASE)), Settings(store="s3://b")) == []


NEEDS = [
    SecretNeed("own", None, "spec.compute.s3CredentialsSecret"),
    SecretNeed("hf", "token", "spec.compute.secretEnv.HF_TOKEN"),
    SecretNeed("hf", "user", "spec.compute.secretEnv.HF_USER"),
]


@pytest.mark.parametrize(
    ("name", "found", "want"),
    [
        ("all-present", {"own": frozenset(), "hf": frozenset({"token", "user"})}, ()),
        (
            "secret-absent",
            {"own": None, "hf": frozenset({"token", "user"})},
            ("Secret own (spec.compute.s3CredentialsSecret) to exist",),
        ),
        (
            "key-absent",
            {"own": frozenset({"AWS_ACCESS_KEY_ID"}), "hf": frozenset({"user"})},
            ("key token in Secret hf (spec.compute.secretEnv.HF_TOKEN)",),
        ),
        (
            "absent-secret-is-named-once",
            {"own": frozenset(), "hf": None},
            ("Secret hf (spec.compute.secretEnv.HF_TOKEN) to exist",),
        ),
        (
            "two-absent-secrets",
            {"own": None, "hf": None},
            (
                "Secret own (spec.compute.s3CredentialsSecret) to exist",
                "Secret hf (spec.compute.secretEnv.HF_TOKEN) to exist",
            ),
        ),
        ("not-looked-up-is-not-blocking", {"hf": frozenset({"token", "user"})}, ()),
    ],
)
def test_missing(name: str, found: dict[str, frozenset[str] | None], want: tuple[str, ...]) -> None:
    assert missing(NEEDS, found) == want
