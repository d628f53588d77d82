"""A local Kubernetes cluster for people and for the pod tests: one code path.

Control plane + a real node (kubelet, containerd, CNI, kube-proxy, CoreDNS) + kwok GPU nodes, the
LMForge images built from the Dockerfile imported into the node, and (for people) SeaweedFS on
the node address with a bucket. The tests' ``node_cluster`` fixture enters :func:`local_cluster`;
``scripts/local-cluster`` runs it until Ctrl-C (or ``scripts/local-cluster down``) and prints the
``KUBECONFIG`` and a ready ``helm install`` line, so the operator can be tried as on kind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .controlplane import ControlPlane, build
from .node import NODE_IP, RealNode, cache_dir, leftovers

REPO = Path(__file__).resolve().parents[2]
IMAGES_SH = REPO / "tests" / "cluster" / "images.sh"
PID_FILE = cache_dir() / "local-cluster.pid"


@dataclass
class NodeCluster:
    """The control plane, its real node and the image names built for this checkout."""

    cp: ControlPlane
    node: RealNode
    images: dict[str, str]
    """Dockerfile target -> image name in the node's containerd (`lmforge.local/<target>:<key>`)."""


def build_images(*targets: str) -> dict[str, str]:
    """tests/cluster/images.sh: target -> image name in buildah's storage; cached by their inputs."""
    proc = subprocess.run(["bash", str(IMAGES_SH), *targets], capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"images.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return dict(line.split() for line in proc.stdout.splitlines())


@contextlib.contextmanager
def local_cluster() -> Iterator[NodeCluster]:
    """Build what is missing (seconds when warm), start everything, always tear it all down; raise
    if the tear-down left anything on the host."""
    images = build_images()
    cp = ControlPlane(bin_dir=build(), node_ip=NODE_IP)
    node: RealNode | None = None
    try:
        node = RealNode(cp)
        node.prepare_host()  # the node address first: the API server listens on it
        cp.start()
        node.start()
        for name in images.values():
            node.import_image(name)
        yield NodeCluster(cp, node, images)
    finally:
        if node is not None:
            node.stop()
        cp.stop()
    left = leftovers()
    if left:
        raise RuntimeError(f"the real node left these behind: {left}")


def main(argv: list[str]) -> int:
    """`up` (default): run until Ctrl-C/SIGTERM; `down`: stop the one that runs."""
    if argv[1:2] == ["down"]:
        try:
            pid = int(PID_FILE.read_text())
        except (OSError, ValueError):
            print("no local cluster is running", file=sys.stderr)
            return 1
        os.kill(pid, signal.SIGTERM)
        print(f"stopping the local cluster (pid {pid})")
        return 0
    from support.seaweed import start_seaweed

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    PID_FILE.parent.mkdir(parents=True, exist_ok=True)
    PID_FILE.write_text(str(os.getpid()))
    try:
        with local_cluster() as nc, start_seaweed(bucket="lmforge", ip=NODE_IP) as s3:
            repo, tag = nc.images["operator"].rsplit(":", 1)
            chart = REPO / "charts" / "lmforge"
            print(
                f"""
export KUBECONFIG={nc.cp.kubeconfig}
# nodes: {nc.node.name} (real, runs pods) and {", ".join(nc.cp.gpu_node_names())} (kwok, 8 GPUs each)
# S3: {s3.endpoint}  bucket lmforge  key {s3.access_key} / {s3.secret_key}
kubectl create secret generic lmforge-s3 --from-literal=AWS_ACCESS_KEY_ID={s3.access_key} \\
  --from-literal=AWS_SECRET_ACCESS_KEY={s3.secret_key} --from-literal=AWS_DEFAULT_REGION={s3.region}
{nc.cp.bin_dir / "helm"} install lmf {chart} --set image.repository={repo} --set image.tag={tag} \\
  --set image.pullPolicy=Never --set trainer.image={nc.images["trainer"]} --set trainer.pullPolicy=Never \\
  --set serving.image={nc.images["serve"]} --set store.uri=s3://lmforge/store \\
  --set store.s3.endpoint={s3.endpoint} --set store.s3.secretName=lmforge-s3
# Ctrl-C (or scripts/local-cluster down) stops everything.""",
                flush=True,
            )
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        PID_FILE.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
