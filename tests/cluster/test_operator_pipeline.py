"""The GPU pipeline example end to end on the control plane, driven by the real operator running as
the chart's ServiceAccount: each stage's Job appears only when its inputs are Ready, lands on the
fake GPU nodes with the right requests and launcher env, and the next stage starts when kwok
finishes the pods and the stage's `result.json` is in the store. A restart mid-pipeline duplicates
nothing; deleting the resources garbage-collects their children."""

from __future__ import annotations

from typing import Any

from lmforge.api.contract import StageName

from .controlplane import ControlPlane, eventually
from .operator_harness import (
    REPO,
    condition,
    finish_job,
    jobs,
    publish_result,
    resource,
    running_operator,
    stage_output,
    wait_job,
)


def _ready(cp: ControlPlane, ns: str, plural: str, name: str, op: Any, reason: str = "Completed") -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = resource(cp, ns, plural, name)
        cond = condition(obj, "Ready")
        return obj if cond and cond["status"] == "True" and cond["reason"] == reason else None

    try:
        return eventually(check, timeout=60, what=f"{plural}/{name} Ready ({reason})", abort=op.dead)
    except TimeoutError as exc:  # say where it stands instead
        status = (resource(cp, ns, plural, name) or {}).get("status")
        raise AssertionError(f"{exc}; status: {status}; operator log: {op.tail()}") from None


def _run_stage(
    cp: ControlPlane,
    op: Any,
    ns: str,
    selector: str,
    stage: StageName,
    artifacts: dict[str, str],
    metrics: dict[str, float] | None = None,
) -> dict[str, Any]:
    job = wait_job(cp, op, ns, selector)
    publish_result(op.store, stage_output(cp, ns, job), stage, artifacts, metrics)
    finish_job(cp, op, ns, job)
    return job


def test_gpu_pipeline_stage_by_stage(control_plane: ControlPlane, namespace: str) -> None:
    cp, ns = control_plane, namespace
    with running_operator(cp, ns) as op:
        # The example's PretrainJob names the store credentials Secret; without it, it would wait
        # (WaitingForSecret, see test_operator_secrets.py). Create it, as a user must.
        cp.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "lmforge-s3"},
                "stringData": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key"},
            },
            namespace=ns,
        )
        cp.kubectl("apply", f"--namespace={ns}", "-f", str(REPO / "examples/cluster/pipeline.yaml"))

        # Dataset: an Indexed Job of 16 workers; nothing downstream starts meanwhile.
        job = wait_job(cp, op, ns, "lmforge.io/dataset=web-corpus")
        assert (job["spec"]["completions"], job["spec"]["completionMode"]) == (16, "Indexed")
        waiting = eventually(
            lambda: condition(resource(cp, ns, "pretrainjobs", "base-1b"), "Ready"),
            timeout=30,
            what="PretrainJob status",
            abort=op.dead,
        )
        assert waiting["reason"] == "WaitingForInput" and "Dataset/web-corpus" in waiting["message"]
        assert jobs(cp, ns, "lmforge.io/pretrainjob") == []
        _run_stage(
            cp,
            op,
            ns,
            "lmforge.io/dataset=web-corpus",
            StageName.DATASET,
            {"shards": "s3://b/shards", "tokenizer": "s3://b/tok"},
            {"tokens": 1e9},
        )
        _ready(cp, ns, "datasets", "web-corpus", op)

        # A restart between stages: the new process re-creates nothing and carries on.
        op.restart()

        # PretrainJob: 4 nodes × 8 GPUs, Kueue gang (created suspended; we admit it as Kueue would).
        job = wait_job(cp, op, ns, "lmforge.io/pretrainjob=base-1b")
        name = job["metadata"]["name"]
        assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "training"
        cp.kubectl("patch", "job", name, f"--namespace={ns}", "--type=merge", "-p", '{"spec":{"suspend":false}}')
        pods = eventually(
            lambda: (lambda ps: ps if len(ps) == 4 and all(p["spec"].get("nodeName") for p in ps) else None)(
                cp.pods(ns, f"batch.kubernetes.io/job-name={name}")
            ),
            timeout=60,
            what="4 scheduled pretrain pods",
            abort=op.dead,
        )
        assert len({p["spec"]["nodeName"] for p in pods}) == 4  # 8 GPUs each: one whole node per pod
        for pod in pods:
            c = pod["spec"]["containers"][0]
            assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env["MASTER_ADDR"] == f"{name}-0.{name}" and env["NNODES"] == "4"
            assert pod["spec"]["subdomain"] == name and pod["spec"]["hostname"].startswith(f"{name}-")
        assert cp.kubectl_json("get", "service", name, f"--namespace={ns}")["spec"]["clusterIP"] == "None"
        publish_result(op.store, stage_output(cp, ns, job), StageName.PRETRAIN, {"model": "s3://b/base"}, {"loss": 2.5})
        finish_job(cp, op, ns, job)
        ready = _ready(cp, ns, "pretrainjobs", "base-1b", op)
        assert ready["status"]["artifacts"]["model"] == "s3://b/base" and ready["status"]["metrics"]["loss"] == 2.5

        _run_stage(cp, op, ns, "lmforge.io/alignmentjob=chat-1b", StageName.ALIGN, {"model": "s3://b/chat"})
        _ready(cp, ns, "alignmentjobs", "chat-1b", op)
        _run_stage(
            cp,
            op,
            ns,
            "lmforge.io/evalsuite=chat-1b-eval",
            StageName.EVALUATE,
            {"results": "s3://b/r"},
            {"hellaswag.acc_norm": 0.4, "safety.refusal_rate": 0.95, "heldout.perplexity": 20.0},
        )
        suite = _ready(cp, ns, "evalsuites", "chat-1b-eval", op)
        assert condition(suite, "GatePassed")["status"] == "True"  # type: ignore[index]

        # ModelRelease: compress Job, then the serving Deployment (kwok makes its pods Ready).
        _run_stage(
            cp,
            op,
            ns,
            "lmforge.io/modelrelease=chat-1b,lmforge.io/component=stage",
            StageName.COMPRESS,
            {"model": "s3://b/q"},
        )
        release = _ready(cp, ns, "modelreleases", "chat-1b", op, reason="Serving")
        assert release["status"]["endpoint"] == f"http://chat-1b.{ns}.svc:8000/v1"
        dep = cp.kubectl_json("get", "deployments", f"--namespace={ns}", "--selector=lmforge.io/modelrelease")["items"]
        assert len(dep) == 1 and dep[0]["status"]["availableReplicas"] == 2
        probe = dep[0]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
        assert probe["httpGet"]["path"] == "/health"

        # Exactly one Job per stage, in spite of the restart; one transition Event per phase change.
        all_jobs = cp.kubectl_json("get", "jobs", f"--namespace={ns}")["items"]
        assert len(all_jobs) == 5, [j["metadata"]["name"] for j in all_jobs]
        events = cp.kubectl_json(
            "get",
            "events",
            f"--namespace={ns}",
            "--field-selector=involvedObject.name=base-1b,involvedObject.kind=PretrainJob",
        )
        reasons = [e["reason"] for e in events["items"]]
        assert reasons.count("Completed") == 1, reasons

        # Deleting the resources garbage-collects every child through ownerReferences.
        cp.kubectl("delete", f"--namespace={ns}", "-f", str(REPO / "examples/cluster/pipeline.yaml"), "--wait=false")

        def gone() -> bool:
            left = cp.kubectl_json(
                "get",
                "jobs,deployments,configmaps,services",
                f"--namespace={ns}",
                "--selector=app.kubernetes.io/managed-by=lmforge-operator",
            )["items"]
            return not left

        eventually(gone, timeout=90, what="children garbage-collected")
