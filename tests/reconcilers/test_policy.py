"""The allow-lists as named table cases: a resource naming an image, ServiceAccount or Secret the
operator's lists do not allow is refused (Ready=False, InvalidSpec, the field named) and nothing of
it is created; an allowed one runs as before."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from lmforge.api import KINDS
from lmforge.api.kinds import Resource
from lmforge.api.meta import Phase, Status
from lmforge.operator.reconcile import InputState, Observed, reconcile
from lmforge.operator.reconcile.policy import Allowlists, allowed, violations
from lmforge.operator.settings import Settings

STORE = "s3://bucket/lmforge"
NOW = "2026-11-29T00:00:00Z"
LISTS = Allowlists(
    images=("ghcr.io/lmforge/*", "registry.local/trainer:1.2"),
    service_accounts=("trainer",),
    secrets=("hf-*", "team-s3"),
    default_image="ghcr.io/lmforge/trainer:0.1.0",
    default_secret="lmforge-s3",
)


def _res(kind: str, spec: dict[str, Any]) -> Resource:
    return KINDS[kind].model.model_validate(
        {"apiVersion": "lmforge.io/v1alpha1", "kind": kind, "metadata": {"name": "x", "namespace": "t"}, "spec": spec}
    )


def _dataset(**compute: Any) -> Resource:
    return _res("Dataset", {"sources": [{"name": "s", "uri": "x.txt", "license": "MIT"}], "compute": compute})


def _release(**serving: Any) -> Resource:
    return _res("ModelRelease", {"modelRef": {"kind": "PretrainJob", "name": "p"}, "serving": serving})


def _suite(**endpoint: Any) -> Resource:
    return _res(
        "EvalSuite",
        {
            "endpoint": {"url": "http://m:8000/v1", **endpoint},
            "tasks": [{"name": "mc", "type": "multipleChoice", "dataUri": "x"}],
        },
    )


@dataclass
class Case:
    name: str
    resource: Resource
    field: str | None
    """The field the refusal must name; None: allowed."""
    lists: Allowlists = LISTS


CASES = [
    Case("no references at all", _dataset(), None),
    Case("image under an allowed prefix", _dataset(image="ghcr.io/lmforge/trainer:9"), None),
    Case("exact image", _dataset(image="registry.local/trainer:1.2"), None),
    Case("the operator's own image, named", _dataset(image="ghcr.io/lmforge/trainer:0.1.0"), None),
    Case("forbidden image", _dataset(image="docker.io/evil/miner:latest"), "spec.compute.image"),
    Case("exact entry is not a prefix", _dataset(image="registry.local/trainer:1.2-evil"), "spec.compute.image"),
    Case("a prefix is not a substring", _dataset(image="evil.io/ghcr.io/lmforge/x"), "spec.compute.image"),
    Case("allowed service account", _dataset(serviceAccountName="trainer"), None),
    Case(
        "forbidden service account", _dataset(serviceAccountName="cluster-admin-sa"), "spec.compute.serviceAccountName"
    ),
    Case("allowed s3 secret", _dataset(s3CredentialsSecret="team-s3"), None),
    Case("the operator's own s3 secret, named", _dataset(s3CredentialsSecret="lmforge-s3"), None),
    Case("forbidden s3 secret", _dataset(s3CredentialsSecret="prod-db"), "spec.compute.s3CredentialsSecret"),
    Case("allowed secretEnv", _dataset(secretEnv={"HF_TOKEN": {"name": "hf-token", "key": "t"}}), None),
    Case(
        "forbidden secretEnv",
        _dataset(secretEnv={"TOKEN": {"name": "root-ca", "key": "k"}}),
        "spec.compute.secretEnv.TOKEN.name",
    ),
    Case(
        "forbidden serving API key",
        _release(apiKeySecret={"name": "other", "key": "k"}),
        "spec.serving.apiKeySecret.name",
    ),
    Case("allowed serving API key", _release(apiKeySecret={"name": "hf-key", "key": "k"}), None),
    Case(
        "forbidden endpoint API key",
        _suite(apiKeySecret={"name": "other", "key": "k"}),
        "spec.endpoint.apiKeySecret.name",
    ),
    Case(
        "no lists: anything goes",
        _dataset(image="docker.io/evil/miner", serviceAccountName="admin", s3CredentialsSecret="prod-db"),
        None,
        Allowlists(),
    ),
    Case(
        "an empty list allows nothing",
        _dataset(serviceAccountName="trainer"),
        "spec.compute.serviceAccountName",
        Allowlists(service_accounts=()),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_allowlists(case: Case) -> None:
    inputs = {"PretrainJob/p": InputState("PretrainJob", "p", True, Status())}
    obs = Observed(
        resource=case.resource,
        kind=case.resource.kind,
        name="x",
        generation=1,
        status=Status(),
        store=STORE,
        inputs=inputs,
        allowlists=case.lists,
    )
    decision = reconcile(obs, now=NOW)
    ready = decision.status.condition("Ready")
    assert ready is not None
    if case.field is None:
        assert ready.reason != "InvalidSpec", ready.message
        assert violations(case.resource, case.lists) == []
        return
    assert ready.status.value == "False" and ready.reason == "InvalidSpec"
    assert ready.message.startswith(case.field + ":") and "not allowed" in ready.message
    assert decision.status.phase is Phase.FAILED
    assert decision.runs == [] and decision.delete == []
    assert [e.reason for e in decision.events] == ["InvalidSpec"]


def test_pattern_syntax() -> None:
    assert allowed("a/b:1", ["a/*"]) and allowed("a/b:1", ["a/b:1"]) and allowed("x", ["*"])
    assert not allowed("a/b:1", ["a/b"]) and not allowed("a", []) and not allowed("ba/b", ["a/*"])


def test_settings_read_the_lists_from_the_environment() -> None:
    s = Settings.from_env(
        {
            "LMFORGE_ALLOWED_IMAGES": '["ghcr.io/lmforge/*"]',
            "LMFORGE_ALLOWED_SECRETS": "[]",
            "LMFORGE_S3_SECRET": "lmforge-s3",
        }
    )
    lists = s.allowlists()
    assert lists.images == ("ghcr.io/lmforge/*",) and lists.secrets == () and lists.service_accounts is None
    assert lists.default_secret == "lmforge-s3" and lists.default_image == s.trainer_image
    assert Settings.from_env({}).allowlists().restricts is False
    with pytest.raises(ValueError, match="JSON list"):
        Settings.from_env({"LMFORGE_ALLOWED_IMAGES": '"ghcr.io/*"'})
