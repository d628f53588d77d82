"""The Kubernetes builders as named table cases: StageRun in, objects out, no cluster."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import yaml

from lmforge.api.contract import StageName, StageSpec
from lmforge.api.scheduling import GangScheduler, Scheduling
from lmforge.operator.kube import build_children
from lmforge.operator.kube.meta import RUN_LABEL, SPEC_HASH
from lmforge.operator.reconcile import StageRun
from lmforge.operator.settings import Settings

from .conftest import SETTINGS, first_run, owner, parse, pipeline

PIPE = pipeline()


def _objs(run: StageRun, res_key: str) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in build_children(run, owner(PIPE[res_key]), SETTINGS)}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@dataclass
class Case:
    name: str
    key: str
    kinds: list[str]
    pods: int
    indexed: bool
    gpus: str | None
    env: dict[str, Any] = field(default_factory=dict)
    command_has: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case(
        "dataset-16-workers-is-an-indexed-job",
        "Dataset/web-corpus",
        ["ConfigMap", "Job"],
        16,
        True,
        None,
        command_has=["-m", "lmforge.trainer", "dataset", "--spec", "/etc/lmforge/spec.yaml"],
        extra={"cpu": "8"},
    ),
    Case(
        "pretrain-4x8-is-indexed-job-with-headless-service",
        "PretrainJob/base-1b",
        ["ConfigMap", "Service", "Job"],
        4,
        True,
        "8",
        env={
            "MASTER_ADDR": "NAME-0.NAME",
            "MASTER_PORT": "29500",
            "NNODES": "4",
            "NPROC_PER_NODE": "8",
            "NODE_RANK": {
                "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
            },
        },
        command_has=[
            "torch.distributed.run",
            "--nnodes=4",
            "--node-rank=$(NODE_RANK)",
            "--master-addr=$(MASTER_ADDR)",
            "--nproc-per-node=8",
        ],
        extra={"kueue": "training", "shm": "64Gi", "node_selector": {"nvidia.com/gpu.product": "H100-SXM"}},
    ),
    Case(
        "sft-one-node-8-gpus-is-a-torchrun-job",
        "AlignmentJob/chat-1b",
        ["ConfigMap", "Job"],
        1,
        False,
        "8",
        env={"NPROC_PER_NODE": "8"},
        command_has=["torch.distributed.run", "--nnodes=1", "align"],
    ),
    Case(
        "eval-is-a-plain-job", "EvalSuite/chat-1b-eval", ["ConfigMap", "Job"], 1, False, None, command_has=["evaluate"]
    ),
    Case(
        "release-compress-is-a-plain-job",
        "ModelRelease/chat-1b",
        ["ConfigMap", "Job"],
        1,
        False,
        "1",
        command_has=["compress"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_job_children(case: Case) -> None:
    run = first_run(PIPE[case.key])
    objs = build_children(run, owner(PIPE[case.key]), SETTINGS)
    assert [o["kind"] for o in objs] == case.kinds
    by_kind = {o["kind"]: o for o in objs}
    job = by_kind["Job"]
    spec = job["spec"]
    assert job["metadata"]["name"] == run.name and len(run.name) <= 52
    assert (spec["completions"], spec["parallelism"]) == (case.pods, case.pods)
    assert (spec.get("completionMode") == "Indexed") == case.indexed
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") == case.gpus
    assert container.get("resources", {}).get("requests", {}).get("nvidia.com/gpu") == case.gpus
    env = _env(container)
    for key, value in case.env.items():
        want = value.replace("NAME", run.name) if isinstance(value, str) else value
        assert env[key] == want, key
    for part in case.command_has:
        assert part in container["command"], (part, container["command"])
    # Common to every stage pod.
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"] is True
    assert container["envFrom"] == [{"secretRef": {"name": "lmforge-s3"}}]
    assert env["AWS_ENDPOINT_URL"] == "http://s3.example:8333"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod.get(
        "tolerations", []
    ) or case.key == "Dataset/web-corpus"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2]},
    }
    assert spec["backoffLimit"] == 3
    cm = by_kind["ConfigMap"]
    stage_spec = StageSpec.model_validate(yaml.safe_load(cm["data"]["spec.yaml"]))
    assert stage_spec == run.spec
    assert pod["volumes"][0] == {"name": "spec", "configMap": {"name": cm["metadata"]["name"]}}
    for obj in objs:
        meta = obj["metadata"]
        assert meta["ownerReferences"][0]["uid"] == "uid-1234" and meta["ownerReferences"][0]["controller"]
        assert meta["labels"][RUN_LABEL] == run.name
        assert meta["labels"][f"lmforge.io/{case.key.split('/')[0].lower()}"] == case.key.split("/")[1]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "lmforge-operator"
        assert SPEC_HASH in meta["annotations"]
    if "cpu" in case.extra:
        assert container["resources"]["requests"]["cpu"] == case.extra["cpu"]
    if "kueue" in case.extra:
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == case.extra["kueue"]
        assert spec["suspend"] is True
    if "shm" in case.extra:
        dshm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert dshm["emptyDir"] == {"medium": "Memory", "sizeLimit": case.extra["shm"]}
    if "node_selector" in case.extra:
        assert pod["nodeSelector"] == case.extra["node_selector"]
    if "Service" in by_kind:
        svc = by_kind["Service"]
        assert svc["spec"]["clusterIP"] == "None" and svc["metadata"]["name"] == run.name
        assert pod["subdomain"] == run.name


def test_same_run_builds_identical_objects() -> None:
    run = first_run(PIPE["PretrainJob/base-1b"])
    assert build_children(run, owner(PIPE["PretrainJob/base-1b"]), SETTINGS) == build_children(
        first_run(PIPE["PretrainJob/base-1b"]), owner(PIPE["PretrainJob/base-1b"]), SETTINGS
    )


def test_volcano_gang_sets_scheduler_and_pod_group() -> None:
    run = first_run(PIPE["PretrainJob/base-1b"])
    volcano = replace(
        run,
        compute=run.compute.model_copy(
            update={"scheduling": Scheduling(gang=GangScheduler.VOLCANO, queue_name="research")}
        ),
    )
    objs = {o["kind"]: o for o in build_children(volcano, owner(PIPE["PretrainJob/base-1b"]), SETTINGS)}
    pod = objs["Job"]["spec"]["template"]
    assert pod["spec"]["schedulerName"] == "volcano"
    assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == run.name
    assert objs["PodGroup"]["spec"] == {"minMember": 4, "queue": "research"}
    assert "suspend" not in objs["Job"]["spec"]


def test_affinity_secret_env_and_image_override_pass_through() -> None:
    doc = {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": "EvalSuite",
        "metadata": {"name": "e"},
        "spec": {
            "modelRef": {"uri": "s3://b/m"},
            "tasks": [{"name": "p", "type": "perplexity"}],
            "compute": {
                "image": "mine:2",
                "env": {"A": "1"},
                "secretEnv": {"HF_TOKEN": {"name": "hf", "key": "token"}},
                "affinity": {"nodeAffinity": {"x": 1}},
                "s3CredentialsSecret": "own",
            },
        },
    }
    res = parse(doc)
    objs = {o["kind"]: o for o in build_children(first_run(res), owner(res), SETTINGS)}
    pod = objs["Job"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "mine:2"
    assert pod["affinity"] == {"nodeAffinity": {"x": 1}}
    assert _env(container)["A"] == "1"
    assert _env(container)["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert container["envFrom"] == [{"secretRef": {"name": "own"}}]


def _serve_run(rel: Any) -> Any:
    """The release's serve run, as the reconciler decides it once its compression succeeded."""
    from lmforge.api.contract import ProgressRecord, RecordType
    from lmforge.operator.reconcile.types import ObservedRun, RunState

    compress = first_run(rel)
    done = ObservedRun(
        compress.name,
        compress.run_id,
        RunState.SUCCEEDED,
        StageName.COMPRESS,
        result=ProgressRecord(
            type=RecordType.RESULT, stage=StageName.COMPRESS, run_id="x", artifacts={"model": "s3://b/cm"}
        ),
    )
    return first_run(rel, runs={compress.name: done})


def test_the_tracking_uri_reaches_every_stage_container_and_the_serving_init_container() -> None:
    tracked = replace(SETTINGS, tracking_uri="http://mlflow.mlflow:5000")
    run = first_run(PIPE["PretrainJob/base-1b"])
    job = {o["kind"]: o for o in build_children(run, owner(PIPE["PretrainJob/base-1b"]), tracked)}["Job"]
    assert _env(job["spec"]["template"]["spec"]["containers"][0])["MLFLOW_TRACKING_URI"] == "http://mlflow.mlflow:5000"
    untracked = {o["kind"]: o for o in build_children(run, owner(PIPE["PretrainJob/base-1b"]), SETTINGS)}["Job"]
    assert "MLFLOW_TRACKING_URI" not in _env(untracked["spec"]["template"]["spec"]["containers"][0])

    rel = PIPE["ModelRelease/chat-1b"]
    dep = build_children(_serve_run(rel), owner(rel), tracked)[1]
    init = dep["spec"]["template"]["spec"]["initContainers"][0]  # it registers the served version
    assert _env(init)["MLFLOW_TRACKING_URI"] == "http://mlflow.mlflow:5000"
    assert Settings.from_env({"LMFORGE_TRACKING_URI": "http://m:5000"}).tracking_uri == "http://m:5000"
    assert Settings.from_env({}).tracking_uri is None


def test_serve_run_is_deployment_with_health_probes_and_stable_service() -> None:

    rel = PIPE["ModelRelease/chat-1b"]
    serve = _serve_run(rel)
    assert serve.stage is StageName.SERVE
    objs = build_children(serve, owner(rel), SETTINGS)
    assert [o["kind"] for o in objs] == ["ConfigMap", "Deployment", "Service", "Service"]
    dep, svc, own = objs[1], objs[2], objs[3]
    assert dep["spec"]["replicas"] == 2
    # The run's own Service reaches this version alone (a smoke suite, a canary's HTTPRoute backend).
    assert own["metadata"]["name"] == serve.name and own["spec"]["selector"][RUN_LABEL] == serve.name
    assert all(dep["spec"]["template"]["metadata"]["labels"][k] == v for k, v in own["spec"]["selector"].items())
    # The release's Service selects every version's serving pods, or one run's alone while only that
    # version may take traffic (a new one being smoke-tested must get no request through it).
    assert RUN_LABEL not in svc["spec"]["selector"]
    assert all(dep["spec"]["template"]["metadata"]["labels"][k] == v for k, v in svc["spec"]["selector"].items())
    pinned = build_children(serve, owner(rel), SETTINGS, serving_only="chat-1b-serve-stable")[2]
    assert pinned["metadata"]["name"] == svc["metadata"]["name"]
    assert pinned["spec"]["selector"] == {**svc["spec"]["selector"], RUN_LABEL: "chat-1b-serve-stable"}
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["restartPolicy"] == "Always"
    # KServe's shape: an init container pulls and verifies the model into a volume, vLLM's own
    # image serves it on every interface of the pod.
    init = pod["initContainers"][0]
    assert init["command"][:3] == ["python", "-m", "lmforge.trainer.serve.prepare"]
    assert init["command"][-4:] == ["--spec", "/etc/lmforge/spec.yaml", "--dest", "/models"]
    assert init["image"] == SETTINGS.trainer_image and "resources" not in init
    assert c["image"] == SETTINGS.serving_image
    assert c["command"][:5] == ["python3", "-m", "vllm.entrypoints.openai.api_server", "--config", "/models/vllm.yaml"]
    assert c["command"][c["command"].index("--host") + 1] == "0.0.0.0"
    assert c["command"][c["command"].index("--port") + 1] == str(c["ports"][0]["containerPort"])
    assert [m for m in c["volumeMounts"] if m["name"] == "models"] == [
        {"name": "models", "mountPath": "/models", "readOnly": True}
    ]
    assert len({m["mountPath"] for m in c["volumeMounts"]}) == len(c["volumeMounts"])
    assert {"name": "models", "emptyDir": {}} in pod["volumes"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    assert dep["spec"]["progressDeadlineSeconds"] > startup
    drain = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 0 < drain < pod["terminationGracePeriodSeconds"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "LMFORGE_METRICS_PORT" not in {e["name"] for e in c["env"]}
    assert svc["metadata"]["name"] == "chat-1b" and RUN_LABEL not in svc["metadata"]["labels"]
    tmpl_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(tmpl_labels[k] == v for k, v in svc["spec"]["selector"].items())
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert "PYTHONPATH" not in _env(c)  # a GPU server's image keeps its own path


def test_a_canary_deployment_gets_its_share_of_replicas_and_keeps_its_full_count() -> None:
    """By replica ratio a canary's Deployment runs its share; the annotation keeps `serving.replicas`
    so the operator can give a scaled-down stable version its count back after a rollback."""
    from lmforge.operator.kube.traffic import FULL_REPLICAS

    rel = PIPE["ModelRelease/chat-1b"]
    serve = _serve_run(rel)
    full = build_children(serve, owner(rel), SETTINGS)[1]
    share = build_children(serve, owner(rel), SETTINGS, replicas=1)[1]
    assert (full["spec"]["replicas"], share["spec"]["replicas"]) == (2, 1)
    assert full["metadata"]["annotations"][FULL_REPLICAS] == share["metadata"]["annotations"][FULL_REPLICAS] == "2"
    assert full["metadata"]["annotations"][SPEC_HASH] != share["metadata"]["annotations"][SPEC_HASH]  # re-applied


def test_a_cpu_server_gets_the_amx_sitecustomize_from_the_init_container() -> None:
    """vLLM's CPU kernels use AMX without asking Linux for it (SIGILL on bf16); the init container
    copies LMForge's sitecustomize next to the model and the server has it first on its path."""

    gpu = PIPE["ModelRelease/chat-1b"]
    rel = gpu.model_copy(update={"spec": gpu.spec.model_copy(update={"gpus": 0})})
    pod = build_children(_serve_run(rel), owner(rel), SETTINGS)[1]["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert "nvidia.com/gpu" not in server["resources"].get("limits", {})
    assert _env(server)["PYTHONPATH"] == "/models/cpu_site"
    assert pod["initContainers"][0]["command"][-2:] == ["--dest", "/models"]


def _eval_pod(tasks: list[dict[str, Any]], compute: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": "EvalSuite",
        "metadata": {"name": "e"},
        "spec": {"modelRef": {"uri": "s3://b/m"}, "tasks": tasks, "compute": compute or {}},
    }
    res = parse(doc)
    job = next(o for o in build_children(first_run(res), owner(res), SETTINGS) if o["kind"] == "Job")
    return dict(job)


def test_stage_pods_are_hardened() -> None:
    """RuntimeDefault seccomp, read-only root with sized writable emptyDirs, no API token, non-root
    without capabilities, a grace period long enough to save a checkpoint, optional deadline."""
    job = _eval_pod(
        [{"name": "p", "type": "perplexity"}],
        {"scratchSize": "7Gi", "terminationGraceSeconds": 600, "activeDeadlineSeconds": 7200},
    )
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["scratch"]["emptyDir"] == {"sizeLimit": "7Gi"}
    assert volumes["dshm"]["emptyDir"]["sizeLimit"]
    assert {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")} == {"/tmp", "/dev/shm"}
    assert pod["terminationGracePeriodSeconds"] == 600 and job["spec"]["activeDeadlineSeconds"] == 7200


def test_only_a_pod_running_model_written_code_leaves_seccomp_for_its_sandbox() -> None:
    code = [{"name": "c", "type": "code", "dataUri": "s3://b/code.jsonl"}]
    pod = _eval_pod(code)["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "Unconfined"}  # bwrap: user namespaces
    assert pod["automountServiceAccountToken"] is False
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    unsandboxed = _eval_pod([{**code[0], "isolation": "none"}])["spec"]["template"]["spec"]
    assert unsandboxed["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_default_resources_apply_only_when_the_spec_sets_none() -> None:
    settings = replace(
        SETTINGS, default_resources={"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "16Gi"}}
    )
    doc = {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": "EvalSuite",
        "metadata": {"name": "e"},
        "spec": {"modelRef": {"uri": "s3://b/m"}, "tasks": [{"name": "p", "type": "perplexity"}]},
    }
    res = parse(doc)
    job = next(o for o in build_children(first_run(res), owner(res), settings) if o["kind"] == "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "1", "memory": "4Gi"},
        "limits": {"memory": "16Gi"},
    }
    own = parse({**doc, "spec": {**doc["spec"], "compute": {"resources": {"limits": {"memory": "2Gi"}}}}})
    job = next(o for o in build_children(first_run(own), owner(own), settings) if o["kind"] == "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"memory": "2Gi"}


def test_a_grpo_job_with_a_code_reward_also_leaves_seccomp_for_its_sandbox() -> None:
    """The code reward runs completions in the same sandbox as an EvalSuite's code tasks."""

    def align_pod(rewards: list[dict[str, Any]]) -> dict[str, Any]:
        doc = {
            "apiVersion": "lmforge.io/v1alpha1",
            "kind": "AlignmentJob",
            "metadata": {"name": "g"},
            "spec": {
                "modelRef": {"uri": "s3://b/m"},
                "method": "grpo",
                "data": {"uri": "s3://b/p.jsonl"},
                "grpo": {"rewards": rewards},
            },
        }
        res = parse(doc)
        job = next(o for o in build_children(first_run(res), owner(res), SETTINGS) if o["kind"] == "Job")
        return dict(job["spec"]["template"]["spec"])

    assert align_pod([{"type": "code"}])["securityContext"]["seccompProfile"] == {"type": "Unconfined"}
    plain = align_pod([{"type": "answer", "extract": "lastNumber"}])
    assert plain["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_a_changed_adapter_set_rolls_the_same_deployment_onto_pods_that_fetch_it() -> None:
    """The operator does not load adapters into running pods: the adapter set is in the pod template
    (a digest), so a changed set rolls the same Deployment (same name, same Service, no new run) and
    each new pod's init container fetches the new set; an unchanged set leaves the template alone."""
    from lmforge.api.contract import InputArtifacts
    from lmforge.api.release import ModelRelease
    from lmforge.operator.kube.serving import ADAPTERS_ANNOTATION
    from lmforge.operator.reconcile.runs import run_id, stage_run

    def deployment(adapters: dict[str, str]) -> dict[str, Any]:
        rel = ModelRelease.model_validate(
            {
                "apiVersion": "lmforge.io/v1alpha1",
                "kind": "ModelRelease",
                "metadata": {"name": "chat", "namespace": "team-a"},
                "spec": {
                    "modelRef": {"uri": "s3://b/m"},
                    "serving": {"maxLoras": 4, "loraAdapters": [{"name": "a"}, {"name": "b"}]},
                },
            }
        )
        inputs = {
            "ModelRelease/chat": InputArtifacts(kind="ModelRelease", name="chat", artifacts={"model": "s3://b/cm"}),
            **{
                f"AlignmentJob/{n}": InputArtifacts(kind="AlignmentJob", name=n, artifacts={"adapter": uri})
                for n, uri in adapters.items()
            },
        }
        run = stage_run(rel, StageName.SERVE, run_id(rel, inputs), "s3://b", inputs, None)
        (dep,) = [o for o in build_children(run, owner(rel), SETTINGS) if o["kind"] == "Deployment"]
        return dep

    def digest(dep: dict[str, Any]) -> str | None:
        return (dep["spec"]["template"]["metadata"].get("annotations") or {}).get(ADAPTERS_ANNOTATION)

    one = deployment({"a": "s3://b/a/1/adapter"})
    two = deployment({"a": "s3://b/a/1/adapter", "b": "s3://b/b/1/adapter"})
    republished = deployment({"a": "s3://b/a/2/adapter"})
    none = deployment({})
    assert (
        one["metadata"]["name"]
        == two["metadata"]["name"]
        == republished["metadata"]["name"]
        == none["metadata"]["name"]
    )
    assert len({digest(one), digest(two), digest(republished)}) == 3 and digest(none) is None
    assert digest(deployment({"a": "s3://b/a/1/adapter"})) == digest(one)
    assert one["metadata"]["annotations"][SPEC_HASH] != two["metadata"]["annotations"][SPEC_HASH]  # re-applied
    assert one["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
