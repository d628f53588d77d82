"""LoRA adapters under the real operator on the control plane: the adapter set is no part of the
release's run, so adding an adapter (an AlignmentJob that becomes Ready after the release already
serves), removing one, and deleting a listed adapter's AlignmentJob roll the *same* Deployment's
pods onto the new set — one Deployment, one
compress Job, the same run id — and `status.adapters` says what the pods serve. The operator does not
load adapters into running pods (docs/release.md); kwok plays the pods."""

from __future__ import annotations

from typing import Any

from lmforge.api.contract import StageName
from lmforge.operator.kube.serving import ADAPTERS_ANNOTATION

from .controlplane import ControlPlane, eventually
from .operator_harness import (
    condition,
    finish_job,
    jobs,
    publish_result,
    resource,
    running_operator,
    stage_output,
    wait_job,
)

API = "lmforge.io/v1alpha1"


def job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "AlignmentJob",
        "metadata": {"name": name},
        "spec": {
            "modelRef": {"uri": "s3://b/base"},
            "method": "sft",
            "data": {"uri": "s3://b/sft.jsonl"},
            "adapter": {"type": "lora", "output": "adapter"},
        },
    }


def release(*adapters: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "ModelRelease",
        "metadata": {"name": "chat"},
        "spec": {
            "modelRef": {"uri": "s3://b/base"},
            "serving": {"maxLoras": 2, "loraAdapters": [{"name": n} for n in adapters]},
        },
    }


def test_a_changed_adapter_set_rolls_the_same_deployment(control_plane: ControlPlane, namespace: str) -> None:
    cp, ns = control_plane, namespace
    with running_operator(cp, ns) as op:

        def run_stage(selector: str, stage: StageName, artifacts: dict[str, str]) -> None:
            found = wait_job(cp, op, ns, selector)
            publish_result(op.store, stage_output(cp, ns, found), stage, artifacts)
            finish_job(cp, op, ns, found)

        def deployments() -> list[dict[str, Any]]:
            return list(
                cp.kubectl_json("get", "deployments", f"--namespace={ns}", "--selector=lmforge.io/modelrelease=chat")[
                    "items"
                ]
            )

        def serving(adapters: list[str]) -> dict[str, Any] | None:
            obj = resource(cp, ns, "modelreleases", "chat")
            ready = condition(obj, "Ready")
            ok = (
                ready and ready["reason"] == "Serving" and (obj or {}).get("status", {}).get("adapters", []) == adapters
            )
            return obj if ok else None

        def digest(dep: dict[str, Any]) -> str | None:
            return (dep["spec"]["template"]["metadata"].get("annotations") or {}).get(ADAPTERS_ANNOTATION)

        cp.apply(job("a"), release("a"), namespace=ns)
        run_stage("lmforge.io/alignmentjob=a", StageName.ALIGN, {"adapter": "s3://b/a/1/adapter"})
        run_stage("lmforge.io/modelrelease=chat,lmforge.io/component=stage", StageName.COMPRESS, {"model": "s3://b/cm"})
        first = eventually(lambda: serving(["a"]), timeout=90, what="chat serving adapter a", abort=op.dead)
        (dep,) = eventually(deployments, timeout=30, what="the Deployment")
        name, one = dep["metadata"]["name"], digest(dep)
        assert one is not None

        # A second adapter: its AlignmentJob becomes Ready while the release serves.
        cp.apply(job("b"), release("a", "b"), namespace=ns)
        run_stage("lmforge.io/alignmentjob=b", StageName.ALIGN, {"adapter": "s3://b/b/1/adapter"})
        second = eventually(lambda: serving(["a", "b"]), timeout=90, what="chat serving a and b", abort=op.dead)
        rolled = eventually(
            lambda: (lambda ds: ds if len(ds) == 1 and digest(ds[0]) not in (None, one) else None)(deployments()),
            timeout=60,
            what="the Deployment's template rolled onto a, b",
            abort=op.dead,
        )
        two = digest(rolled[0])
        assert rolled[0]["metadata"]["name"] == name
        assert second["status"]["runId"] == first["status"]["runId"]
        assert second["status"]["endpoint"] == first["status"]["endpoint"]

        # One removed: the same Deployment again, onto the smaller set.
        cp.apply(release("b"), namespace=ns)
        eventually(lambda: serving(["b"]), timeout=90, what="chat serving b only", abort=op.dead)
        (last,) = eventually(
            lambda: (lambda ds: ds if len(ds) == 1 and digest(ds[0]) not in (None, one, two) else None)(deployments()),
            timeout=60,
            what="the Deployment's template rolled onto b",
            abort=op.dead,
        )
        assert last["metadata"]["name"] == name

        # The last adapter's AlignmentJob deleted while still listed: the pods roll onto no adapter.
        cp.kubectl("delete", f"--namespace={ns}", "alignmentjobs.lmforge.io", "b", "--wait=false")
        deleted = eventually(lambda: serving([]), timeout=90, what="chat serving no adapter", abort=op.dead)
        ready = condition(deleted, "Ready")
        assert ready is not None and "not served until Ready with an adapter: AlignmentJob/b" in ready["message"]
        eventually(
            lambda: (lambda ds: ds if len(ds) == 1 and digest(ds[0]) is None else None)(deployments()),
            timeout=60,
            what="the Deployment's template rolled onto no adapter",
            abort=op.dead,
        )
        compress = jobs(cp, ns, "lmforge.io/modelrelease=chat,lmforge.io/component=stage")
        assert len(compress) == 1  # the model was compressed once for all three adapter sets
