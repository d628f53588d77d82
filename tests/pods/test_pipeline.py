"""The cluster path for real: `helm install` with the images built here, `kubectl apply` of the tiny
pipeline (data in S3), `kubectl wait` until everything is Ready, a chat completion through the
release's Service (ClusterIP, through kube-proxy), `kubectl logs` of every stage pod, Prometheus
scraping a running trainer pod and the operator, and a changed release taking over with no failed
request."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest
from cluster.controlplane import eventually
from cluster.node import NODE_IP
from support.argocd import health
from support.prometheus import Prometheus, prometheus
from support.seaweed import SeaweedServer, start_seaweed

from .conftest import REPO, NodeCluster

pytestmark = [pytest.mark.slow, pytest.mark.ml]

CHART = REPO / "charts" / "lmforge"
TINY = REPO / "tests" / "embedded" / "tiny-ci"
DATA = REPO / "examples" / "tiny" / "data"
BUCKET = "lmforge"
KINDS = ("datasets", "pretrainjobs", "alignmentjobs", "evalsuites", "modelreleases")
STAGE_POD_METRICS = """  - job_name: lmforge-pods
    file_sd_configs:
      - files: [{path}]
        refresh_interval: 1s
"""
"""Debian's Prometheus is built without Kubernetes service discovery: `PodTargets` lists what the
chart's PodMonitor selects (LMForge's pods, container port `metrics`) into a file_sd file."""


class Background:
    """A loop on a daemon thread for the length of a `with` block: `_loop` runs until `_stop` is set
    (the watchers below: Prometheus targets, a client's traffic, the Service's endpoints)."""

    join_s = 30.0

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.join_s)

    def _loop(self) -> None:
        raise NotImplementedError


class PodTargets(Background):
    """Keeps a Prometheus file_sd file listing the `metrics` ports of LMForge's pods in `ns` (the
    stage pods and the operator), as the chart's PodMonitor and ServiceMonitor select them."""

    def __init__(self, nc: NodeCluster, ns: str, path: Path) -> None:
        super().__init__()
        self.nc, self.ns, self.path = nc, ns, path
        self.path.write_text("[]")

    def _loop(self) -> None:
        end = time.monotonic() + 3600
        while not self._stop.is_set() and time.monotonic() < end:
            try:
                pods = self.nc.cp.kubectl_json("get", "pods", "-n", self.ns, "-l", "app.kubernetes.io/name=lmforge")
            except Exception:
                pods = {"items": []}
            groups = []
            for pod in pods["items"]:
                ip = (pod.get("status") or {}).get("podIP")
                for c in pod["spec"]["containers"]:
                    for port in c.get("ports") or []:
                        if ip and port.get("name") == "metrics":
                            groups.append(
                                {
                                    "targets": [f"{ip}:{port['containerPort']}"],
                                    "labels": {"pod": pod["metadata"]["name"]},
                                }
                            )
            tmp = self.path.with_suffix(".part")
            tmp.write_text(json.dumps(groups))
            tmp.replace(self.path)
            self._stop.wait(1.0)


@pytest.fixture(scope="module")
def pod_s3(node_cluster: NodeCluster) -> Iterator[SeaweedServer]:
    """SeaweedFS on the node address, where pods reach it."""
    with start_seaweed(bucket=BUCKET, ip=NODE_IP) as s3:
        yield s3


@pytest.fixture(scope="module")
def installed(
    node_cluster: NodeCluster, pod_s3: SeaweedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A namespace with the chart installed in it and the tiny manifests (data in S3): the
    pipeline test applies them all; the multi-node test reuses its Dataset."""
    ns = node_cluster.cp.create_namespace(f"e2e-{uuid.uuid4().hex[:6]}")
    try:
        install(node_cluster, ns, pod_s3)
        yield ns, manifests(tmp_path_factory.mktemp("tiny"), pod_s3)
    finally:
        node_cluster.cp.delete_namespace(ns)


def install(nc: NodeCluster, ns: str, s3: SeaweedServer) -> None:
    """The S3 Secret, then `helm install` with the images built here, watching `ns` only."""
    nc.cp.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "lmforge-s3"},
            "stringData": {
                "AWS_ACCESS_KEY_ID": s3.access_key,
                "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                "AWS_DEFAULT_REGION": s3.region,
            },
        },
        namespace=ns,
    )
    repo, tag = nc.images["operator"].rsplit(":", 1)
    stage_env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DO_NOT_TRACK": "1",
    }
    nc.cp.helm(
        "install",
        "lmf",
        str(CHART),
        f"--namespace={ns}",
        "--wait",
        "--timeout=5m",
        f"--set=image.repository={repo}",
        f"--set=image.tag={tag}",
        "--set=image.pullPolicy=Never",
        f"--set=trainer.image={nc.images['trainer']}",
        "--set=trainer.pullPolicy=Never",
        f"--set=serving.image={nc.images['serve']}",
        f"--set=store.uri=s3://{BUCKET}/store",
        f"--set=store.s3.endpoint={s3.endpoint}",
        "--set=store.s3.secretName=lmforge-s3",
        "--set=rbac.namespaced=true",
        # The admission policy stays on: the faults test's unpullable image and late Secret
        # are on its lists, as a user's own registry and Secrets would be.
        '--set-json=policy.allowedImages=["lmforge.local/*"]',
        '--set-json=policy.allowedSecrets=["late-token"]',
        f"--set=watchNamespaces={{{ns}}}",
        "--set=pollSeconds=2",
        f"--set-json=trainer.env={json.dumps(stage_env)}",
        timeout=400,
    )


def manifests(tmp: Path, s3: SeaweedServer) -> Path:
    """The CI variant of examples/tiny with its data uploaded to S3 and read from there."""
    client = s3.client()
    for path in DATA.iterdir():
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"inputs/tiny/{path.name}")
    out = tmp / "tiny"
    out.mkdir()
    for path in sorted(TINY.glob("*.yaml")):
        text = path.read_text().replace("../../../examples/tiny/data/", f"s3://{BUCKET}/inputs/tiny/")
        (out / path.name).write_text(text)
    return out


def resources(nc: NodeCluster, ns: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = nc.cp.kubectl_json("get", ",".join(KINDS), "-n", ns)["items"]
    return items


def ready(obj: dict[str, Any]) -> dict[str, Any] | None:
    conds = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == "Ready"), None)


def wait_all_ready(nc: NodeCluster, ns: str, timeout: float) -> None:
    """Until every resource is Ready=True; fails at once when one has failed (with its reason)."""

    def check() -> bool:
        items = resources(nc, ns)
        for obj in items:
            cond = ready(obj)
            if (
                cond
                and cond["status"] == "False"
                and cond.get("reason") in ("StageFailed", "InputFailed", "InvalidSpec", "GateFailed")
            ):
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} failed: {cond}\n{pod_logs(nc, ns)}")
        return len(items) == 6 and all((ready(o) or {}).get("status") == "True" for o in items)

    try:
        eventually(check, timeout=timeout, interval=3, what="the tiny pipeline Ready", abort=nc.node.dead_component)
    except TimeoutError:
        summary = [(o["kind"], o["metadata"]["name"], ready(o)) for o in resources(nc, ns)]
        raise AssertionError(f"not Ready in {timeout:.0f} s: {summary}\n{pod_logs(nc, ns)}") from None


def pod_logs(nc: NodeCluster, ns: str, tail: int = 15, limit: int = 12000) -> str:
    out = []
    for pod in nc.cp.kubectl_json("get", "pods", "-n", ns)["items"]:
        name = pod["metadata"]["name"]
        for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
            log = nc.cp.kubectl("logs", name, "-c", c["name"], "-n", ns, f"--tail={tail}", check=False)
            out.append(f"--- {name}/{c['name']} ({pod['status'].get('phase')})\n{log.stdout}{log.stderr}")
    return "\n".join(out)[-limit:]


def chat(url: str, question: str, timeout: float = 60) -> dict[str, Any]:
    body = json.dumps(
        {"model": "tiny", "messages": [{"role": "user", "content": question}], "max_tokens": 12, "temperature": 0}
    ).encode()
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        answer: dict[str, Any] = json.load(resp)
    return answer


class Traffic(Background):
    """A client loop against the release's Service, counting failed requests (bounded in time)."""

    join_s = 60.0

    def __init__(self, url: str, limit_s: float = 900) -> None:
        super().__init__()
        self.url, self.limit_s = url, limit_s
        self.ok = self.failed = 0
        self.errors: list[str] = []
        self.answers: list[str] = []

    def _loop(self) -> None:
        end = time.monotonic() + self.limit_s
        while not self._stop.is_set() and time.monotonic() < end:
            try:
                choices = chat(self.url, "What is the capital of Sumakria?", timeout=30)["choices"]
                if choices:
                    self.ok += 1
                    self.answers.append(choices[0]["message"]["content"])
            except (urllib.error.URLError, OSError, ValueError) as exc:
                self.failed += 1
                self.errors.append(repr(exc))
            self._stop.wait(0.2)


def serving_deployments(nc: NodeCluster, ns: str) -> list[str]:
    items = nc.cp.kubectl_json("get", "deployments", "-n", ns, "-l", "lmforge.io/component=serve")["items"]
    return sorted(d["metadata"]["name"] for d in items)


def test_tiny_pipeline_from_kubectl_apply_to_an_answer_through_the_service(
    node_cluster: NodeCluster, installed: tuple[str, Path], pod_s3: SeaweedServer
) -> None:
    nc, cp = node_cluster, node_cluster.cp
    ns, tiny = installed
    started = time.monotonic()
    targets = Path(cp.workdir) / "pod-targets.json"
    with PodTargets(nc, ns, targets), prometheus({}, scrape_configs=STAGE_POD_METRICS.format(path=targets)) as prom:
        cp.kubectl("apply", "-n", ns, "-f", str(tiny))
        seen: dict[str, float] = {}
        pretrain_metrics = threading.Thread(target=_watch_trainer_metrics, args=(prom, seen), daemon=True)
        pretrain_metrics.start()
        wait_all_ready(nc, ns, timeout=1800)
        pipeline_s = time.monotonic() - started
        for kind in KINDS:
            cp.kubectl("wait", "--for=condition=Ready", kind, "--all", "-n", ns, "--timeout=30s")
        # What GitOps users see: the chart's Argo CD health check on the live objects.
        assert {(o["kind"], o["metadata"]["name"]): health(o)[0] for o in resources(nc, ns)} == {
            (o["kind"], o["metadata"]["name"]): "Healthy" for o in resources(nc, ns)
        }
        # The operator's own metrics, through the same discovery.
        assert prom.eventually('lmforge_resource_ready{kind="ModelRelease"} == 1', timeout=60)
        pretrain_metrics.join(5)
    assert seen.get("step", 0) >= 1, f"Prometheus never scraped the running trainer pod: {seen}"
    assert seen.get("loss", 0) > 0 and seen.get("tokens_per_second", 0) > 0 and "mfu" in seen, seen

    # Every stage pod's log is there for `kubectl logs`, with the stage's records.
    jobs = cp.kubectl_json("get", "jobs", "-n", ns, "-l", "app.kubernetes.io/managed-by=lmforge-operator")["items"]
    stages = {j["metadata"]["labels"].get("lmforge.io/run", "").split("-")[-2] for j in jobs}
    assert {"dataset", "pretrain", "align", "evaluate", "compress"} <= stages, stages
    for job in jobs:
        log = cp.kubectl("logs", f"job/{job['metadata']['name']}", "-n", ns).stdout
        assert "@@lmforge " in log, (job["metadata"]["name"], log[-2000:])

    # A chat completion through the release's Service: ClusterIP, routed by kube-proxy.
    svc = cp.kubectl_json("get", "service", "tiny-release", "-n", ns)
    url = f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"
    answer = chat(url, "What is the capital of Sumakria?")
    assert answer["choices"][0]["message"]["content"].strip(), answer
    release = cp.kubectl_json("get", "modelrelease", "tiny-release", "-n", ns)
    assert release["status"]["endpoint"].startswith(f"http://tiny-release.{ns}.svc:"), release["status"]
    [old] = serving_deployments(nc, ns)

    # The smoke suite passes on the version serving now (so its threshold can tell good from bad).
    apply_smoke_suite(nc, ns, pod_s3)

    # A changed release, smoke-tested then a canary at 50 % (one pod beside one), promoted while a
    # client keeps asking through the release's Service.
    switch_started = time.monotonic()
    with Traffic(url) as traffic:
        patch_release(nc, ns, {"serving": {"maxModelLen": 120, "smokeEvalSuiteRef": {"name": "tiny-smoke"}, **CANARY}})

        def switched() -> bool:
            deps = serving_deployments(nc, ns)
            obj = cp.kubectl_json("get", "modelrelease", "tiny-release", "-n", ns)
            rollout = (obj.get("status") or {}).get("rollout") or {}
            return len(deps) == 1 and deps[0] != old and rollout.get("state") == "Promoted"

        eventually(switched, timeout=900, interval=2, what="the new release promoted, serving alone")
        # Requests keep flowing a little after the old pods went away.
        time.sleep(3)
    switch_s = time.monotonic() - switch_started
    assert traffic.ok > 10, (traffic.ok, traffic.errors[:5])
    assert traffic.failed == 0, f"{traffic.failed} failed requests during the switch: {traffic.errors[:5]}"
    events = cp.kubectl_json("get", "events", "-n", ns, "--field-selector=involvedObject.name=tiny-release")
    assert {"SmokeTesting", "CanaryStep", "Promoted"} <= {e["reason"] for e in events["items"]}
    print(
        f"\npipeline Ready in {pipeline_s:.0f} s; smoke test + 50 % canary -> promoted in {switch_s:.0f} s "
        f"with {traffic.ok} requests, 0 failed"
    )


CANARY = {"canary": {"steps": [50], "stepSeconds": 10}}
SMOKE_SUITE = """apiVersion: lmforge.io/v1alpha1
kind: EvalSuite
metadata:
  name: tiny-smoke
spec:
  endpoint: {releaseRef: {name: tiny-release}}
  tasks: [{name: smoke, type: perplexity, dataUri: "s3://%s/inputs/smoke.jsonl"}]
  thresholds: ["smoke.perplexity <= 100"]
"""
"""Perplexity on lines of the tiny corpus through the release's OpenAI endpoint: ~10 for the trained
model, thousands for random weights."""


def patch_release(nc: NodeCluster, ns: str, spec: dict[str, Any]) -> None:
    nc.cp.kubectl("patch", "modelrelease", "tiny-release", "-n", ns, "--type=merge", "-p", json.dumps({"spec": spec}))


def apply_smoke_suite(nc: NodeCluster, ns: str, s3: SeaweedServer) -> None:
    """The smoke EvalSuite, its rows uploaded; Ready once it passed on the version serving now."""
    rows = [json.loads(line) for line in (DATA / "corpus.jsonl").read_text().splitlines()[:8]]
    body = "".join(json.dumps({"text": r["text"][:400]}) + "\n" for r in rows)
    s3.client().put_object(Bucket=BUCKET, Key="inputs/smoke.jsonl", Body=body.encode())
    nc.cp.kubectl("apply", "-n", ns, "-f", "-", input=SMOKE_SUITE % BUCKET)

    def passed() -> bool:
        obj = nc.cp.kubectl_json("get", "evalsuite", "tiny-smoke", "-n", ns)
        cond = ready(obj) or {}
        if cond.get("status") == "False" and cond.get("reason") in ("StageFailed", "GateFailed", "InvalidSpec"):
            pytest.fail(f"the smoke suite failed on the good model: {cond}\n{pod_logs(nc, ns)}")
        return cond.get("status") == "True"

    eventually(passed, timeout=600, interval=2, what="the smoke suite passed on the serving version")


def garbage_model(s3: SeaweedServer, model_uri: str, tmp: Path) -> str:
    """The served model's files with every weight replaced by noise, uploaded as a plain Hugging Face
    directory: loads, serves and answers — gibberish."""
    import torch
    from transformers import AutoModelForCausalLM

    client = s3.client()
    prefix = model_uri.removeprefix(f"s3://{BUCKET}/").rstrip("/") + "/"
    src, out = tmp / "src", tmp / "garbage"
    src.mkdir()
    out.mkdir()
    for obj in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]:
        rel = obj["Key"][len(prefix) :]
        if "/" not in rel and rel != "MANIFEST.json":
            client.download_file(BUCKET, obj["Key"], str(src / rel))
    model = AutoModelForCausalLM.from_pretrained(src)
    torch.manual_seed(0)
    with torch.no_grad():  # the matrices as freshly initialised (std 0.02): near-uniform next tokens
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.02)
    for path in src.iterdir():
        if not path.name.endswith(".safetensors") and path.name != "config.json":
            (out / path.name).write_bytes(path.read_bytes())
    model.save_pretrained(out)
    for path in out.iterdir():
        client.upload_file(str(path), BUCKET, f"inputs/garbage/{path.name}")
    return f"s3://{BUCKET}/inputs/garbage"


class Endpoints(Background):
    """Samples the pod IPs behind the release's Service (its EndpointSlices) while a rollout runs."""

    def __init__(self, nc: NodeCluster, ns: str) -> None:
        super().__init__()
        self.nc, self.ns = nc, ns
        self.seen: set[str] = set()
        self.samples = 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                slices = self.nc.cp.kubectl_json(
                    "get", "endpointslices", "-n", self.ns, "-l", "kubernetes.io/service-name=tiny-release"
                )["items"]
            except Exception:
                slices = []
            for sl in slices:
                for ep in sl.get("endpoints") or []:
                    if (ep.get("conditions") or {}).get("ready"):
                        self.seen.update(ep.get("addresses") or [])
            self.samples += 1
            self._stop.wait(0.5)


def test_a_garbage_canary_gets_no_traffic_and_is_rolled_back_under_live_traffic(
    node_cluster: NodeCluster, installed: tuple[str, Path], pod_s3: SeaweedServer, tmp_path: Path
) -> None:
    """A new version whose weights are noise is compressed and started beside the serving one, fails
    its smoke suite and is rolled back: while a client keeps asking through the release's Service, no
    request fails, the candidate's pod is never behind that Service, and the stable keeps serving."""
    nc, cp = node_cluster, node_cluster.cp
    ns, _ = installed
    rel = cp.kubectl_json("get", "modelrelease", "tiny-release", "-n", ns)
    if (ready(rel) or {}).get("status") != "True" or not serving_deployments(nc, ns):
        pytest.fail("needs the tiny release served (and its smoke suite) by the pipeline test before it")
    if not cp.kubectl_json("get", "evalsuites", "-n", ns, "--field-selector=metadata.name=tiny-smoke")["items"]:
        apply_smoke_suite(nc, ns, pod_s3)
    svc = cp.kubectl_json("get", "service", "tiny-release", "-n", ns)
    url = f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"
    [stable] = serving_deployments(nc, ns)
    stable_answer = chat(url, "What is the capital of Sumakria?")["choices"][0]["message"]["content"]
    promoted_before = ((rel.get("status") or {}).get("rollout") or {}).get("candidate")
    dpo = cp.kubectl_json("get", "alignmentjob", "tiny-dpo", "-n", ns)
    garbage = garbage_model(pod_s3, dpo["status"]["artifacts"]["model"], tmp_path)

    started = time.monotonic()
    smoke_at: float | None = None
    candidate_ips: set[str] = set()
    with Traffic(url) as traffic, Endpoints(nc, ns) as behind:
        patch_release(
            nc,
            ns,
            {
                "modelRef": {"kind": None, "name": None, "uri": garbage},
                "evalSuiteRef": None,
                "compression": {"quantization": {"method": "none", "calibrationSamples": None}},
                "serving": {"maxModelLen": 112, "smokeEvalSuiteRef": {"name": "tiny-smoke"}, **CANARY},
            },
        )

        def rolled_back() -> dict[str, Any] | None:
            nonlocal smoke_at
            obj = cp.kubectl_json("get", "modelrelease", "tiny-release", "-n", ns)
            rollout = (obj.get("status") or {}).get("rollout") or {}
            if rollout.get("state") == "SmokeTesting" and smoke_at is None:
                smoke_at = time.monotonic()
            for pod in cp.kubectl_json("get", "pods", "-n", ns, "-l", "lmforge.io/component=serve")["items"]:
                if not pod["metadata"]["name"].startswith(stable) and pod["status"].get("podIP"):
                    candidate_ips.add(pod["status"]["podIP"])
            if rollout.get("state") in ("Promoted", "Canary") and rollout.get("candidate") != promoted_before:
                pytest.fail(f"the garbage version got a share of traffic: {rollout}")
            return obj if rollout.get("state") == "RolledBack" else None

        final = eventually(rolled_back, timeout=900, interval=1, what="the garbage version rolled back")
        rollback_s = time.monotonic() - started
        time.sleep(3)  # requests keep flowing after the candidate went away
    cond = ready(final) or {}
    assert cond.get("status") == "True" and cond.get("reason") == "RolledBack", cond
    assert "smoke" in cond.get("message", ""), cond
    assert candidate_ips, "no candidate pod was seen: nothing was rolled out"
    assert behind.samples > 10 and not (behind.seen & candidate_ips), (behind.seen, candidate_ips)
    assert traffic.ok > 10, (traffic.ok, traffic.errors[:5])
    assert traffic.failed == 0, f"{traffic.failed} failed requests on the stable: {traffic.errors[:5]}"
    # Greedy answers of the one model serving: the same sentence (a pod of noise behind the Service
    # would have answered about half of them).
    assert traffic.answers.count(stable_answer) >= 0.9 * len(traffic.answers), set(traffic.answers)
    eventually(lambda: serving_deployments(nc, ns) == [stable], timeout=120, what="the candidate's Deployment gone")
    after = f" (smoke test began {smoke_at - started:.0f} s in)" if smoke_at is not None else ""
    print(
        f"\ngarbage canary rolled back {rollback_s:.0f} s after the patch{after}; "
        f"{traffic.ok} requests through the Service, 0 failed, "
        f"{traffic.answers.count(stable_answer)} answered the stable's sentence"
    )


def _watch_trainer_metrics(prom: Prometheus, seen: dict[str, float]) -> None:
    """Record what Prometheus scraped from the pretrain pod while it ran (it exits when done)."""
    end = time.monotonic() + 1800
    while time.monotonic() < end and not ("step" in seen and "mfu" in seen and "loss" in seen):
        try:
            for sample in prom.query('lmforge_stage_step{stage="pretrain"}'):
                seen["step"] = max(seen.get("step", 0), float(sample["value"][1]))
            for sample in prom.query('lmforge_stage_metric{stage="pretrain"}'):
                seen[sample["metric"]["name"]] = float(sample["value"][1])
        except OSError:
            pass
        time.sleep(0.5)


MULTINODE = """apiVersion: lmforge.io/v1alpha1
kind: PretrainJob
metadata:
  name: tiny-2nodes
spec:
  datasetRef:
    name: tiny-corpus
  model: {numLayers: 2, hiddenSize: 128, numHeads: 4, numKvHeads: 2, headDim: 32, tieEmbeddings: true}
  training: {maxSteps: 400, microBatchSize: 8, precision: bf16}
  optimizer: {lr: 0.003, minLr: 0.0003, warmupSteps: 6}
  deepspeed: {zeroStage: 1}
  checkpoint: {everySteps: 25, keepLast: 3}
  validation: {everySteps: 1000, batches: 1}
  topology: {nodes: 2}
  compute: {processes: 1, threads: 1}
"""


def records(log: str) -> list[dict[str, Any]]:
    return [json.loads(line.split("@@lmforge ", 1)[1]) for line in log.splitlines() if "@@lmforge " in line]


def test_two_node_pretraining_rendezvous_by_dns_and_resumes_after_a_pod_is_deleted(
    node_cluster: NodeCluster, installed: tuple[str, Path], pod_s3: SeaweedServer
) -> None:
    """Two real pods find each other through the headless Service's DNS name, train with DeepSpeed
    over gloo and checkpoint to S3; deleting one mid-run restarts the Job, which resumes from the
    last complete checkpoint at its step."""
    cp, (ns, tiny) = node_cluster.cp, installed
    cp.kubectl("apply", "-n", ns, "-f", str(tiny / "01-dataset.yaml"))  # no-op when the pipeline ran
    cp.kubectl("apply", "-n", ns, "-f", "-", input=MULTINODE)
    selector = "lmforge.io/pretrainjob=tiny-2nodes"

    def job() -> dict[str, Any] | None:
        items = cp.kubectl_json("get", "jobs", "-n", ns, "-l", selector)["items"]
        return items[0] if items else None

    made = eventually(job, timeout=600, interval=2, what="the two-node Job")
    assert made["spec"]["completions"] == 2 and made["spec"]["completionMode"] == "Indexed"
    name = made["metadata"]["name"]
    svc = cp.kubectl_json("get", "service", name, "-n", ns)
    assert svc["spec"]["clusterIP"] == "None"
    prefix = None

    def checkpointed() -> int | None:
        nonlocal prefix
        obj = cp.kubectl_json("get", "pretrainjob", "tiny-2nodes", "-n", ns)
        rid = (obj.get("status") or {}).get("runId")
        if not rid:
            return None
        prefix = f"store/pretrainjobs/{ns}/tiny-2nodes/{rid}"  # run prefixes carry the namespace
        try:
            body = pod_s3.client().get_object(Bucket=BUCKET, Key=f"{prefix}/checkpoints/latest")["Body"].read()
        except Exception:
            return None
        step = int(json.loads(body)["step"])
        return step if step >= 50 else None

    step_before = eventually(checkpointed, timeout=900, interval=1, what="a checkpoint of the two-node run")
    pods = cp.kubectl_json("get", "pods", "-n", ns, "-l", f"batch.kubernetes.io/job-name={name}")["items"]
    assert len(pods) == 2 and {p["status"]["phase"] for p in pods} == {"Running"}, [p["status"] for p in pods]
    victim = next(
        p["metadata"]["name"]
        for p in pods
        if p["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index") == "1"
    )
    cp.kubectl("delete", "pod", victim, "-n", ns, "--wait=false")

    def done() -> dict[str, Any] | None:
        obj = cp.kubectl_json("get", "pretrainjob", "tiny-2nodes", "-n", ns)
        cond = ready(obj)
        if cond and cond["status"] == "False" and cond["reason"] in ("StageFailed", "InvalidSpec"):
            pytest.fail(f"two-node run failed: {cond}\n{pod_logs(node_cluster, ns, tail=60, limit=40000)}")
        return obj if cond and cond["status"] == "True" else None

    final = eventually(done, timeout=1200, interval=3, what="the two-node run finished")
    # 400 steps × (2 ranks × 8 sequences × 128 tokens): both ranks trained to the end.
    assert final["status"]["metrics"]["tokens"] == 400 * 2 * 8 * 128, final["status"]
    # The retried rank 0 says where it resumed: at or after the checkpoint seen before the kill.
    pods = cp.kubectl_json("get", "pods", "-n", ns, "-l", f"batch.kubernetes.io/job-name={name}")["items"]
    resumed = []
    for pod in pods:
        log = cp.kubectl("logs", pod["metadata"]["name"], "-n", ns, check=False).stdout
        resumed += [r["message"] for r in records(log) if "resumed from checkpoint" in (r.get("message") or "")]
    assert resumed, "no pod resumed from a checkpoint after the deletion"
    steps = [int(m.split("step-")[1].split()[0].rstrip(",;:")) for m in resumed]
    assert max(steps) >= step_before, (steps, step_before)


def _dataset(name: str, uri: str, compute: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "lmforge.io/v1alpha1",
            "kind": "Dataset",
            "metadata": {"name": name},
            "spec": {
                "sources": [{"name": "c", "uri": uri, "license": "CC0-1.0"}],
                "tokenizer": {"vocabSize": 1024},
                "seqLength": 128,
                "compute": compute,
            },
        }
    )


def _failed(cp: Any, ns: str, name: str, timeout: float = 300) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        cond = ready(cp.kubectl_json("get", "dataset", name, "-n", ns))
        return cond if cond and cond["status"] == "False" and cond["reason"] == "StageFailed" else None

    found: dict[str, Any] = eventually(check, timeout=timeout, interval=2, what=f"dataset {name} StageFailed")
    return found


def test_real_pod_faults_show_as_conditions(node_cluster: NodeCluster, installed: tuple[str, Path]) -> None:
    """An OOM-killed container names the limit; a stage exiting 2 (invalid input) fails at once,
    not retried; an image that cannot be pulled is relayed while the pod waits; a missing Secret
    holds the run back until it exists."""
    cp, (ns, _) = node_cluster.cp, installed
    cp.kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=_dataset(
            "oom",
            f"s3://{BUCKET}/inputs/tiny/corpus.jsonl",
            {"backoffLimit": 0, "resources": {"requests": {"memory": "48Mi"}, "limits": {"memory": "48Mi"}}},
        ),
    )
    cp.kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=_dataset("no-input", f"s3://{BUCKET}/inputs/none-*.jsonl", {"backoffLimit": 3}),
    )
    cp.kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=_dataset("no-image", f"s3://{BUCKET}/inputs/tiny/corpus.jsonl", {"image": "lmforge.local/absent:1"}),
    )

    oom = _failed(cp, ns, "oom")
    assert "OOMKilled" in oom["message"] and "48Mi" in oom["message"], oom
    invalid = _failed(cp, ns, "no-input")
    assert "no object matches" in invalid["message"], invalid
    [job] = cp.kubectl_json("get", "jobs", "-n", ns, "-l", "lmforge.io/dataset=no-input")["items"]
    assert job["status"].get("failed") == 1, job["status"]  # exit 2: the pod failure policy, no retry

    def pull_waiting() -> dict[str, Any] | None:
        cond = ready(cp.kubectl_json("get", "dataset", "no-image", "-n", ns))
        return cond if cond and "ErrImageNeverPull" in cond.get("message", "") else None

    cond = eventually(pull_waiting, timeout=120, interval=2, what="the unpullable image relayed")
    assert cond["status"] == "False" and "lmforge.local/absent:1" in cond["message"], cond

    # A Secret the stage needs is missing: the run waits (no pod stuck in CreateContainerConfigError),
    # the condition names the Secret; once it exists, the stage runs in a real pod and completes.
    cp.kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=_dataset(
            "needs-token",
            f"s3://{BUCKET}/inputs/tiny/corpus.jsonl",
            {"secretEnv": {"HF_TOKEN": {"name": "late-token", "key": "token"}}},
        ),
    )

    def secret_waiting() -> dict[str, Any] | None:
        cond = ready(cp.kubectl_json("get", "dataset", "needs-token", "-n", ns))
        return cond if cond and cond.get("reason") == "WaitingForSecret" else None

    cond = eventually(secret_waiting, timeout=120, interval=2, what="the missing Secret relayed")
    assert "late-token" in cond["message"], cond
    assert not cp.kubectl_json("get", "pods", "-n", ns, "-l", "lmforge.io/dataset=needs-token")["items"]
    cp.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late-token"}, "stringData": {"token": "t0ken"}},
        namespace=ns,
    )

    def done() -> dict[str, Any] | None:
        cond = ready(cp.kubectl_json("get", "dataset", "needs-token", "-n", ns))
        return cond if cond and cond["status"] == "True" else None

    eventually(done, timeout=420, interval=3, what="the dataset Ready once its Secret exists")
