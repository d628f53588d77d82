"""The real node runs pods from the images built here: networking, DNS, Services, logs and exec,
and each image does what its Dockerfile target promises."""

from __future__ import annotations

import json
from typing import Any

from cluster.controlplane import eventually
from cluster.node import NODE_LABEL

from .conftest import NodeCluster


def pod(
    name: str, image: str, command: list[str], *, restart: str = "Never", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """A pod pinned to the real node, running as the images' non-root user."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": {
            "nodeSelector": {NODE_LABEL: "true"},
            "restartPolicy": restart,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }


def wait_phase(nc: NodeCluster, ns: str, name: str, phases: tuple[str, ...], timeout: float = 180) -> str:
    def check() -> str | None:
        phase = nc.cp.kubectl_json("get", "pod", name, "-n", ns)["status"].get("phase")
        return phase if phase in phases else None

    return eventually(check, timeout=timeout, what=f"pod {ns}/{name} in {phases}", abort=nc.node.dead_component)


def run_to_end(nc: NodeCluster, ns: str, name: str, image: str, command: list[str]) -> tuple[str, str]:
    """Run a pod to completion; (phase, its log)."""
    nc.cp.apply(pod(name, image, command), namespace=ns)
    phase = wait_phase(nc, ns, name, ("Succeeded", "Failed"))
    return phase, nc.cp.kubectl("logs", name, "-n", ns).stdout


def test_pods_reach_each_other_through_a_service_by_its_dns_name(node_cluster: NodeCluster, pod_namespace: str) -> None:
    nc, ns = node_cluster, pod_namespace
    image = nc.images["operator"]
    serve = (
        "import http.server, pathlib; pathlib.Path('/tmp/www').mkdir(); "
        "pathlib.Path('/tmp/www/hello').write_text('hello from ' + __import__('socket').gethostname()); "
        "http.server.test(HandlerClass=__import__('functools').partial("
        "http.server.SimpleHTTPRequestHandler, directory='/tmp/www'), port=8080, bind='0.0.0.0')"
    )
    nc.cp.apply(pod("web", image, ["python", "-c", serve], restart="Always"), namespace=ns)
    nc.cp.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        namespace=ns,
    )
    wait_phase(nc, ns, "web", ("Running",))
    web = nc.cp.kubectl_json("get", "pod", "web", "-n", ns)
    assert web["status"]["podIP"].startswith("10.88."), web["status"]
    fetch = (
        "import urllib.request, time\n"
        "for attempt in range(60):\n"
        "    try:\n"
        f"        print(urllib.request.urlopen('http://web.{ns}.svc.cluster.local/hello', timeout=5).read().decode()); break\n"
        "    except OSError as e:\n"
        "        print('retry', e, flush=True); time.sleep(1)\n"
        "else:\n"
        "    raise SystemExit(1)\n"
    )
    phase, log = run_to_end(nc, ns, "client", image, ["python", "-c", fetch])
    assert phase == "Succeeded", log
    assert "hello from web" in log  # CoreDNS resolved the name, kube-proxy routed the ClusterIP
    # The API server reaches the kubelet: exec into the running pod.
    out = nc.cp.kubectl("exec", "web", "-n", ns, "--", "python", "-c", "import os; print(os.getuid())").stdout
    assert out.strip() == "1000"


def test_the_images_do_what_their_targets_promise(node_cluster: NodeCluster, pod_namespace: str) -> None:
    nc, ns = node_cluster, pod_namespace
    phase, log = run_to_end(nc, ns, "trainer-help", nc.images["trainer"], ["python", "-m", "lmforge.trainer", "--help"])
    assert phase == "Succeeded" and "usage: python -m lmforge.trainer" in log, log
    check = (
        "import sys, lmforge.operator.handlers; "
        "print('torch loaded' if 'torch' in sys.modules else 'no torch'); "
        "import importlib.util; print('torch installed' if importlib.util.find_spec('torch') else 'torch absent')"
    )
    phase, log = run_to_end(nc, ns, "operator-torch", nc.images["operator"], ["python", "-c", check])
    assert phase == "Succeeded" and "no torch" in log and "torch absent" in log, log
    phase, log = run_to_end(
        nc,
        ns,
        "serve-vllm",
        nc.images["serve"],
        ["python", "-c", "import vllm, lmforge; print('vllm', vllm.__version__)"],
    )
    assert phase == "Succeeded" and "vllm 0.32.0" in log, log


SANDBOX_CHECK = """
import json, os
from lmforge.trainer.evaluate import sandbox
sandbox.probe()
escape = "open('/tmp/escaped', 'w').write('x')\\nimport subprocess\\nsubprocess.run(['sh', '-c', 'echo x > /tmp/escaped-sh'])"
nested = "import subprocess\\nprint(subprocess.run(['unshare', '--user', '--map-root-user', 'true']).returncode)"
outcomes = {name: sandbox.run_program(src) for name, src in
            {"ordinary": "def check():\\n    assert sum([2, 3]) == 5\\ncheck()", "escape": escape, "nested": nested}.items()}
print(json.dumps({"outcomes": {k: [o.passed, o.isolation, o.output.strip()] for k, o in outcomes.items()},
                  "leaked": sorted(p for p in os.listdir('/tmp') if p.startswith('escaped'))}))
"""


def test_the_code_sandbox_holds_in_an_evaluate_pod(node_cluster: NodeCluster, pod_namespace: str) -> None:
    """The pod the operator builds for an EvalSuite with a code task (non-root, read-only root,
    `/proc/sys` read-only as the runtime mounts it, no capabilities) establishes the bubblewrap
    sandbox: a program passes, its writes stay inside, a nested user namespace is refused."""
    from kube.conftest import SETTINGS, first_run, owner, parse

    suite = parse(
        {
            "apiVersion": "lmforge.io/v1alpha1",
            "kind": "EvalSuite",
            "metadata": {"name": "code"},
            "spec": {
                "modelRef": {"uri": "s3://b/m"},
                "tasks": [{"name": "c", "type": "code", "dataUri": "s3://b/code.jsonl"}],
            },
        }
    )
    from lmforge.operator.kube import build_children

    job = next(o for o in build_children(first_run(suite), owner(suite), SETTINGS) if o["kind"] == "Job")
    spec = job["spec"]["template"]["spec"]
    spec.update(
        restartPolicy="Never",
        nodeSelector={NODE_LABEL: "true"},
        tolerations=[],
        volumes=[v for v in spec["volumes"] if "configMap" not in v],
    )
    main = spec["containers"][0]
    main.update(
        image=node_cluster.images["trainer"],
        imagePullPolicy="Never",
        command=["python", "-c", SANDBOX_CHECK],
        args=[],
        envFrom=[],
        volumeMounts=[m for m in main["volumeMounts"] if m["name"] != "spec"],
    )
    assert main["securityContext"]["readOnlyRootFilesystem"] and spec["securityContext"]["runAsNonRoot"]
    ns = pod_namespace
    node_cluster.cp.apply(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sandbox"}, "spec": spec}, namespace=ns
    )
    phase = wait_phase(node_cluster, ns, "sandbox", ("Succeeded", "Failed"))
    log = node_cluster.cp.kubectl("logs", "sandbox", "-n", ns).stdout
    assert phase == "Succeeded", log
    report = json.loads(log.strip().splitlines()[-1])
    outcomes = report["outcomes"]
    assert outcomes["ordinary"][:2] == [True, "bubblewrap"], outcomes
    assert outcomes["escape"][1] == "bubblewrap" and report["leaked"] == [], report
    assert outcomes["nested"][0] and outcomes["nested"][2].endswith("1"), outcomes  # unshare failed (EPERM)
