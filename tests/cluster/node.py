"""A real Kubernetes node on this machine: kubelet, containerd + runc, CNI, kube-proxy, CoreDNS.

Why: kwok nodes run no containers, so the in-pod path (images, networking, probes, exporters,
DNS rendezvous) is invisible to them. This node runs pods for real, next to the kwok GPU nodes.

What it needs and why (see docs/cluster-tests.md, "The real node"):

* **An address that is not loopback.** kubelet refuses ``127.0.0.1``, and pods cannot reach the
  host's loopback. The fixture makes a veth pair (``lmfnode0``/``lmfnode1``) and gives one end
  ``NODE_IP`` (a /32 in 10.201.0.0/24); the API server, the kubelet, CoreDNS and the tests' S3 and
  Prometheus listen there. Nothing listens on a public interface.
* **containerd 1.6 (Debian) with runc**, started with its own root/state/socket. Its CRI plugin
  must set ``restrict_oom_score_adj`` (root here lacks CAP_SYS_RESOURCE, so the pause container's
  ``oom_score_adj=-998`` is refused) and uses a pause image built here (nothing can be pulled).
  The content store lives in the user's cache, so imported images survive between runs.
* **cgroup v1** on these hosts: kubelet >= 1.35 needs ``failCgroupV1: false``; its pods live
  under the cgroup ``/lmforge`` so that tear-down removes exactly what it made.
* **CNI**: Debian's bridge + host-local (pods in 10.88.0.0/16 on bridge ``lmfcni0``) and portmap.
* **kube-proxy** in iptables mode with ``masqueradeAll`` (a pod reaching a Service backed by a
  pod on the same bridge needs the reply to come back through the host).
* **CoreDNS** as a host process on ``NODE_IP:53``, behind the ``kube-dns`` Service (10.96.0.10).

:meth:`RealNode.stop` deletes every pod, stops the processes, kills any shim left, unmounts
what is under its directories, removes the cgroups, the bridge, the veth and every iptables chain
kube-proxy, kubelet and CNI added, and restores the sysctls kubelet and the bridge plugin change.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .controlplane import (
    Component,
    ControlPlane,
    ControlPlaneError,
    components_logs,
    eventually,
    first_dead,
    free_port,
)

NODE_IP = os.environ.get("LMFORGE_NODE_IP", "10.201.0.1")
VETH = ("lmfnode0", "lmfnode1")
BRIDGE = "lmfcni0"
POD_CIDR = "10.88.0.0/16"
DNS_SERVICE_IP = "10.96.0.10"
CGROUP_ROOT = "lmforge"
PAUSE_IMAGE = "lmforge.local/pause:1"
NODE_LABEL = "lmforge.io/real-node"
#: Chains that kube-proxy, kubelet and the CNI plugins create; tear-down removes exactly these.
OWN_CHAINS = re.compile(r"^(KUBE-|CNI-)")
#: Sysctls kubelet (setupKernelTunables) and the bridge plugin set; restored on stop.
SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
)
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
WORKDIR_PREFIX = "lmforge-node-"
SYSCTLS_FILE = "sysctls.json"


def cache_dir() -> Path:
    return Path(os.environ.get("LMFORGE_CACHE", Path.home() / ".cache" / "lmforge")) / "node"


def requirements() -> list[str]:
    """What this machine lacks for a real node (empty when it can run one)."""
    missing = [b for b in ("containerd", "runc", "ctr", "iptables", "ip") if shutil.which(b) is None]
    if not any(Path(d, "bridge").exists() for d in CNI_BIN_DIRS):
        missing.append("CNI plugins (Debian: containernetworking-plugins)")
    if os.geteuid() != 0:
        missing.append("root (network and cgroup set-up)")
    return missing


def run(*argv: str, check: bool = True, timeout: float = 60, input: bytes | None = None) -> str:
    proc = subprocess.run(list(argv), capture_output=True, timeout=timeout, input=input, check=False)
    if check and proc.returncode != 0:
        raise ControlPlaneError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    return proc.stdout.decode(errors="replace")


def oci_archive(files: dict[str, tuple[bytes, int]], *, entrypoint: list[str], name: str) -> bytes:
    """A one-layer OCI image archive (``ctr images import`` reads it) holding ``files``.

    Why by hand: the pause and CoreDNS images are a single static binary each; building them with
    a container builder would cost a base image and a minute for what is three JSON documents.
    """
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w") as tar:
        for path, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    layer = layer_buf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": entrypoint, "User": "65534:65534"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": f"sha256:{digest}", "size": len(data)}

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(layer)}],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    **blob(manifest),
                    "annotations": {"org.opencontainers.image.ref.name": name, "io.containerd.image.name": name},
                }
            ],
        }
    ).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        entries = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index}
        entries |= {f"blobs/sha256/{d}": data for d, data in blobs.items()}
        for path, data in entries.items():
            info = tarfile.TarInfo(path)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@dataclass
class RealNode:
    """One real node registered with ``cp`` (which must have been made with ``node_ip``)."""

    cp: ControlPlane
    name: str = ""
    workdir: Path = field(init=False)
    components: list[Component] = field(init=False, default_factory=list)
    ports: dict[str, int] = field(init=False, default_factory=dict)
    _sysctls: dict[str, str] = field(init=False, default_factory=dict)
    _started: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.name = self.name or self.cp.node_name
        if not self.cp.node_ip:
            raise ValueError("the control plane must be made with node_ip for a real node")

    # ------------------------------------------------------------------ paths

    @property
    def socket(self) -> Path:
        return self.workdir / "containerd.sock"

    @property
    def containerd_root(self) -> Path:
        return cache_dir() / "containerd"

    def ctr(self, *args: str, timeout: float = 600, input: bytes | None = None) -> str:
        return run("ctr", f"--address={self.socket}", "--namespace=k8s.io", *args, timeout=timeout, input=input)

    # ------------------------------------------------------------------ lifecycle

    def prepare_host(self) -> None:
        """The node's address (before the control plane starts: the API server listens on it),
        after noting the sysctls the node will change. Undone by :meth:`stop`."""
        if self._started:
            return
        missing = requirements()
        if missing:
            raise ControlPlaneError(f"a real node needs: {', '.join(missing)}")
        sweep_stale()
        self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        (self.workdir / "owner.pid").write_text(str(os.getpid()))
        self._started = True
        try:
            self._save_sysctls()
            self._network_up()
        except BaseException:
            self.stop()
            raise

    def start(self) -> None:
        """Start containerd, kubelet, kube-proxy and CoreDNS against the (started) control plane."""
        self.prepare_host()
        try:
            self._cgroups_up()
            self._start_containerd()
            self.import_image(
                PAUSE_IMAGE,
                oci_archive(
                    {"/pause": ((self.cp.bin_dir / "pause").read_bytes(), 0o755)},
                    entrypoint=["/pause"],
                    name=PAUSE_IMAGE,
                ),
            )
            self._start_kubelet()
            self._start_kube_proxy()
            self._start_coredns()
        except BaseException as exc:
            logs = self.logs()
            self.stop()
            raise ControlPlaneError(f"real node did not start: {exc}\n{logs}") from exc

    def stop(self) -> None:
        """Tear down everything :meth:`start` made; safe to call more than once."""
        if not self._started:
            return
        self._started = False
        with contextlib.suppress(Exception):
            self._delete_all_pods()
        for comp in reversed(self.components):
            if comp.name != "containerd":
                comp.stop()
        with contextlib.suppress(Exception):
            self._remove_sandboxes()
        for comp in reversed(self.components):
            comp.stop()
        self.components.clear()
        self._kill_shims()
        self._unmount_under(self.workdir, self.containerd_root)
        self._cgroups_down()
        self._iptables_down()
        self._network_down()
        self._restore_sysctls()
        if os.environ.get("LMFORGE_KEEP_CLUSTER_DIR") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    def logs(self, chars: int = 3000) -> str:
        return components_logs(self.components, chars)

    def dead_component(self) -> str | None:
        return first_dead(self.components)

    def _spawn(self, name: str, argv: list[str]) -> Component:
        (self.workdir / "logs").mkdir(exist_ok=True)
        comp = Component(name, argv, self.workdir / "logs" / f"{name}.log")
        self.components.append(comp)
        comp.start()
        return comp

    def _wait(self, what: str, check: Any, timeout: float = 120) -> Any:
        def abort() -> str | None:
            return self.dead_component() or self.cp.dead_component()

        return eventually(check, timeout=timeout, what=what, abort=abort)

    # ------------------------------------------------------------------ host state

    def _save_sysctls(self) -> None:
        for key in SYSCTLS:
            with contextlib.suppress(OSError):
                self._sysctls[key] = Path("/proc/sys", key).read_text().strip()
        # Also on disk: a runner killed before its tear-down is cleaned up by the next start.
        (self.workdir / SYSCTLS_FILE).write_text(json.dumps(self._sysctls))

    def _restore_sysctls(self) -> None:
        restore_sysctls(self._sysctls)

    def _network_up(self) -> None:
        self._network_down()  # a previous run killed before its tear-down
        run("ip", "link", "add", VETH[0], "type", "veth", "peer", "name", VETH[1])
        run("ip", "addr", "add", f"{NODE_IP}/32", "dev", VETH[0])
        for dev in VETH:
            run("ip", "link", "set", dev, "up")
        # The bridge plugin turns forwarding on for the pods' gateway; bridged packets go through
        # iptables so that Service NAT applies between pods on the same bridge.
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        with contextlib.suppress(OSError):
            Path("/proc/sys/net/bridge/bridge-nf-call-iptables").write_text("1\n")
        cni = self.workdir / "cni"
        cni.mkdir()
        (cni / "10-lmforge.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "lmforge",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.workdir / "ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=1,
            )
        )

    @staticmethod
    def _network_down() -> None:
        for dev in (BRIDGE, VETH[0]):
            run("ip", "link", "delete", dev, check=False)

    @staticmethod
    def _cgroup_dirs() -> list[Path]:
        return [
            p / CGROUP_ROOT
            for p in Path("/sys/fs/cgroup").iterdir()
            if p.is_dir() and p.name != "unified" and (p / "cgroup.procs").exists()
        ]

    def _cgroups_up(self) -> None:
        for path in self._cgroup_dirs():
            path.mkdir(exist_ok=True)
            if path.parent.name == "cpuset":  # a v1 cpuset takes no task until it has cpus/mems
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (path / knob).write_text((path.parent / knob).read_text())

    @staticmethod
    def _cgroups_down() -> None:
        for root in RealNode._cgroup_dirs():
            if not root.exists():
                continue
            dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for path in [*dirs, root]:
                with contextlib.suppress(OSError):
                    for pid in (path / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                for _ in range(50):
                    try:
                        path.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.1)

    @staticmethod
    def _iptables_down() -> None:
        """Remove every KUBE-*/CNI-* chain and every rule that jumps to one (v4 and v6)."""
        for tool in ("iptables", "ip6tables"):
            if shutil.which(tool) is None:
                continue
            dump = run(f"{tool}-save", check=False)
            table = ""
            own: dict[str, list[str]] = {}
            jumps: list[tuple[str, str]] = []
            for line in dump.splitlines():
                if line.startswith("*"):
                    table = line[1:]
                elif line.startswith(":") and OWN_CHAINS.match(line[1:]):
                    own.setdefault(table, []).append(line[1:].split()[0])
                elif line.startswith("-A "):
                    chain = line.split()[1]
                    target = re.search(r"-j (\S+)", line)
                    if not OWN_CHAINS.match(chain) and target and OWN_CHAINS.match(target.group(1)):
                        jumps.append((table, line[3:]))
            for tbl, rule in jumps:
                run("sh", "-c", f"{tool} -w -t {tbl} -D {rule}", check=False)
            for tbl, chains in own.items():
                for chain in chains:
                    run(tool, "-w", "-t", tbl, "-F", chain, check=False)
                for chain in chains:
                    run(tool, "-w", "-t", tbl, "-X", chain, check=False)

    @staticmethod
    def _unmount_under(*roots: Path) -> None:
        prefixes = tuple(str(r.resolve()) + "/" for r in roots)
        mounts = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4].replace("\\040", " ")
                if point.startswith(prefixes):
                    mounts.append(point)
        for point in sorted(mounts, key=len, reverse=True):
            run("umount", "-l", point, check=False)

    def _kill_shims(self) -> None:
        """containerd's shims daemonise (their parent is init); kill ours and their children."""
        needle = str(self.socket).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if needle in (proc / "cmdline").read_bytes():
                    os.killpg(os.getpgid(int(proc.name)), signal.SIGKILL)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(proc.name), signal.SIGKILL)

    # ------------------------------------------------------------------ containerd

    def _start_containerd(self) -> None:
        root, state = self.containerd_root, self.workdir / "containerd-state"
        root.mkdir(parents=True, exist_ok=True)
        cni_bin = next(d for d in CNI_BIN_DIRS if Path(d, "bridge").exists())
        config = f"""version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.workdir / "containerd.ttrpc.sock"}"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{self.workdir / "cni"}"
    max_conf_num = 1
"""
        (self.workdir / "containerd.toml").write_text(config)
        self._spawn("containerd", ["containerd", f"--config={self.workdir / 'containerd.toml'}", "--log-level=warn"])
        self._wait(
            "containerd",
            lambda: (
                self.socket.exists()
                and run("ctr", f"--address={self.socket}", "version", check=False, timeout=10).strip()
            ),
        )

    def images(self) -> dict[str, str]:
        """Image name -> manifest digest, as containerd's k8s.io namespace has them."""
        out: dict[str, str] = {}
        for line in self.ctr("images", "list").splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3:
                out[parts[0]] = parts[2]
        return out

    def import_image(self, name: str, archive: bytes | None = None) -> None:
        """Put ``name`` into containerd unless it is there already (the store is cached): from an
        OCI archive in memory, or streamed from buildah's storage (no multi-GB file on disk).
        The unpacked layers' blobs are then dropped, as the CRI's ``discard_unpacked_layers`` does
        for pulls: containers start from the snapshots, and the blobs would double the disk used."""
        if name in self.images():
            return
        if archive is not None:
            self.ctr("images", "import", "--all-platforms", "-", input=archive, timeout=600)
        else:
            push = subprocess.Popen(
                ["buildah", "push", "--quiet", name, f"docker-archive:/dev/stdout:{name}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            imp = subprocess.run(
                ["ctr", f"--address={self.socket}", "--namespace=k8s.io", "images", "import", "--all-platforms", "-"],
                stdin=push.stdout,
                capture_output=True,
                timeout=1800,
                check=False,
            )
            assert push.stdout is not None and push.stderr is not None
            push.stdout.close()
            push_err = push.stderr.read().decode(errors="replace")
            if push.wait(60) != 0 or imp.returncode != 0:
                raise ControlPlaneError(
                    f"importing {name}: buildah push: {push_err[-1500:]} "
                    f"ctr import: {imp.stderr.decode(errors='replace')[-1500:]}"
                )
        digest = self.images().get(name)
        if digest is None:
            raise ControlPlaneError(f"importing {name}: containerd does not list it afterwards")
        manifest = json.loads(self.ctr("content", "get", digest))
        for layer in manifest.get("layers", []):
            run("ctr", f"--address={self.socket}", "--namespace=k8s.io", "content", "rm", layer["digest"], check=False)

    # ------------------------------------------------------------------ kubelet

    def _start_kubelet(self) -> None:
        pki = self.cp.workdir / "pki"
        for key in ("kubelet", "healthz"):
            self.ports[key] = free_port()
        (self.workdir / "resolv.conf").write_text("nameserver 127.0.0.53\n")  # no upstream DNS here
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # these hosts are cgroup v1; kubelet >= 1.35 refuses v1 otherwise
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "address": NODE_IP,
            "port": self.ports["kubelet"],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.ports["healthz"],
            "tlsCertFile": str(pki / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDNS": [DNS_SERVICE_IP],
            "clusterDomain": "cluster.local",
            "resolvConf": str(self.workdir / "resolv.conf"),
            "failSwapOn": False,
            "podLogsDir": str(self.workdir / "pod-logs"),
            "maxPods": 60,
            "serializeImagePulls": False,
            # Images are imported, never pulled: garbage collection would delete them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "200Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "evictionPressureTransitionPeriod": "10s",
            "nodeStatusUpdateFrequency": "5s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "shutdownGracePeriod": "0s",
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "localStorageCapacityIsolation": True,
            "containerLogMaxSize": "10Mi",
            "enforceNodeAllocatable": ["pods"],
        }
        (self.workdir / "kubelet.yaml").write_text(json.dumps(config, indent=1))
        self._spawn(
            "kubelet",
            [
                str(self.cp.bin_dir / "kubelet"),
                f"--config={self.workdir / 'kubelet.yaml'}",
                f"--kubeconfig={self.cp.workdir / 'kubelet.kubeconfig'}",
                f"--root-dir={self.workdir / 'kubelet'}",
                f"--cert-dir={self.workdir / 'kubelet-pki'}",
                f"--node-ip={NODE_IP}",
                f"--hostname-override={self.name}",
                f"--node-labels={NODE_LABEL}=true",
                "--v=1",
            ],
        )

        def ready() -> bool:
            status, node = self.cp.request("GET", f"/api/v1/nodes/{self.name}")
            conds = node.get("status", {}).get("conditions", []) if status == 200 else []
            taints = node.get("spec", {}).get("taints") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conds) and not any(
                str(t.get("key", "")).startswith("node.kubernetes.io/") for t in taints
            )

        self._wait(f"node {self.name} Ready", ready, timeout=180)

    # ------------------------------------------------------------------ kube-proxy, CoreDNS

    def _start_kube_proxy(self) -> None:
        for key in ("proxy_healthz", "proxy_metrics"):
            self.ports[key] = free_port()
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.cp.workdir / "kube-proxy.kubeconfig")},
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "bindAddress": NODE_IP,
            "healthzBindAddress": f"127.0.0.1:{self.ports['proxy_healthz']}",
            "metricsBindAddress": f"127.0.0.1:{self.ports['proxy_metrics']}",
            "hostnameOverride": self.name,
            "iptables": {"masqueradeAll": True, "syncPeriod": "10s", "minSyncPeriod": "0s"},
            # Leave the host's conntrack table alone (0 = do not change the sysctls).
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "nodePortAddresses": [f"{NODE_IP}/32"],
        }
        (self.workdir / "kube-proxy.yaml").write_text(json.dumps(config, indent=1))
        self._spawn(
            "kube-proxy", [str(self.cp.bin_dir / "kube-proxy"), f"--config={self.workdir / 'kube-proxy.yaml'}", "--v=1"]
        )
        self._wait(
            "kube-proxy /healthz",
            lambda: run("curl", "-sf", f"http://127.0.0.1:{self.ports['proxy_healthz']}/healthz", check=False),
        )

    def _start_coredns(self) -> None:
        # CoreDNS reads Services and EndpointSlices as its own identity, with only those rights.
        self.cp.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "lmforge:coredns"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["endpoints", "services", "pods", "namespaces"],
                        "verbs": ["list", "watch"],
                    },
                    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "lmforge:coredns"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "lmforge:coredns"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "lmforge:coredns"}],
            },
        )
        self.ports["dns_health"] = free_port()
        self.ports["dns_ready"] = free_port()
        corefile = f""".:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{self.ports["dns_health"]}
    ready 127.0.0.1:{self.ports["dns_ready"]}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {self.cp.workdir / "coredns.kubeconfig"} lmforge-test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"""
        (self.workdir / "Corefile").write_text(corefile)
        self._spawn("coredns", [str(self.cp.bin_dir / "coredns"), "-conf", str(self.workdir / "Corefile")])
        self.cp.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
                "spec": {
                    "clusterIP": DNS_SERVICE_IP,
                    "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP"},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                    ],
                },
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "kube-dns-host",
                    "namespace": "kube-system",
                    "labels": {
                        "kubernetes.io/service-name": "kube-dns",
                        "endpointslice.kubernetes.io/managed-by": "lmforge-tests",
                    },
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                ],
            },
        )
        self._wait(
            "CoreDNS ready",
            lambda: run("curl", "-sf", f"http://127.0.0.1:{self.ports['dns_ready']}/ready", check=False),
        )

    # ------------------------------------------------------------------ tear-down helpers

    def _delete_all_pods(self) -> None:
        namespaces = self.cp.kubectl_json("get", "namespaces")["items"]
        for ns in namespaces:
            name = ns["metadata"]["name"]
            self.cp.kubectl(
                "delete",
                "pods",
                "--all",
                "-n",
                name,
                "--grace-period=1",
                "--wait=false",
                f"--field-selector=spec.nodeName={self.name}",
                check=False,
            )

        def gone() -> bool:
            pods = self.cp.kubectl_json("get", "pods", "-A", f"--field-selector=spec.nodeName={self.name}")
            return not pods["items"]

        with contextlib.suppress(Exception):
            eventually(gone, timeout=60, what="pods on the real node deleted")

    def _remove_sandboxes(self) -> None:
        """Stop and remove containers containerd still has (kubelet gone or slow)."""
        for cid in self.ctr("containers", "list", "-q").split():
            run(
                "ctr",
                f"--address={self.socket}",
                "--namespace=k8s.io",
                "tasks",
                "delete",
                "-f",
                cid,
                check=False,
                timeout=30,
            )
            run(
                "ctr",
                f"--address={self.socket}",
                "--namespace=k8s.io",
                "containers",
                "delete",
                cid,
                check=False,
                timeout=30,
            )


def restore_sysctls(saved: dict[str, str]) -> None:
    for key, value in saved.items():
        path = Path("/proc/sys", key)
        with contextlib.suppress(OSError):
            if path.read_text().strip() != value:
                path.write_text(value + "\n")


def sweep_stale() -> None:
    """Tear down what a node whose runner was SIGKILLed left behind (its children died with it,
    through PR_SET_PDEATHSIG, but not its shims, mounts, cgroups, chains, links and sysctls)."""
    for path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        try:
            os.kill(int((path / "owner.pid").read_text()), 0)
            continue  # its runner is alive
        except (OSError, ValueError):
            pass
        needle = str(path / "containerd.sock").encode()
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError, ValueError):
                if proc.name.isdigit() and needle in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
        RealNode._unmount_under(path, cache_dir() / "containerd")
        RealNode._cgroups_down()
        RealNode._iptables_down()
        RealNode._network_down()
        with contextlib.suppress(OSError, ValueError):
            restore_sysctls(json.loads((path / SYSCTLS_FILE).read_text()))
        shutil.rmtree(path, ignore_errors=True)


def leftovers() -> list[str]:
    """What a stopped node could have left on the host; empty when the tear-down was complete."""
    found: list[str] = []
    links = run("ip", "-o", "link", check=False)
    found += [dev for dev in (BRIDGE, *VETH) if re.search(rf"\b{dev}[@:]", links)]
    for tool in ("iptables-save", "ip6tables-save"):
        if shutil.which(tool):
            found += [
                f"{tool}: {line}" for line in run(tool, check=False).splitlines() if re.match(r"^:(KUBE-|CNI-)", line)
            ]
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit():
                argv0 = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                if re.search(r"(kubelet|kube-proxy|coredns|containerd|containerd-shim-runc-v2)$", argv0):
                    found.append(f"process {proc.name}: {argv0}")
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {m}" for m in re.findall(r" (\S*lmforge-node-\S*) ", mounts)]
    found += [f"cgroup {p}" for p in RealNode._cgroup_dirs() if p.exists()]
    return found
