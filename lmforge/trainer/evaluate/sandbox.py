"""Run untrusted Python (model-written code) so that it cannot harm the host, or refuse to run it.

Each program runs under bubblewrap (`bwrap`), which works without root (an unprivileged user
namespace) and with it (the parent first drops to uid/gid 65534, nobody). Inside, the program has:

* new **user, PID, network, IPC, UTS, mount and cgroup namespaces**: it sees only its own
  processes (so `kill(-1, …)` reaches nothing outside), only a downed loopback device;
* a **seccomp filter** of LMForge's own (`seccomp.py`): no nested user namespaces, mounts, keyrings,
  `bpf`, `ptrace`... — what the container runtime's default profile forbids, which the pod running
  this code cannot keep (it would forbid the sandbox's own user namespace);
* a **root of read-only binds** of `/usr` (and `/lib*`, `/bin`, `/sbin` as on the host) plus the
  interpreter's prefix — no `/etc`, `/home`, `/root`, `/work`, no `/proc` at all (not even its own:
  nothing can read the harness's memory through it), no `/sys`; the only writable places are three
  **size-capped tmpfs** mounts private to the run: its directory `/sandbox`, `/tmp` and `/dev/shm`;
  nothing it writes reaches the host's disk;
* an **empty environment** (`--clearenv`), a new session (no terminal to inject input into), and
  it dies with its parent; when its PID-1 exits the kernel kills every process it forked,
  `setsid()` or not;
* **rlimits** set by the harness before the program's first line: CPU seconds, address space (the
  memory cap, per process), processes (counted per sandbox: its user namespace is new), file size,
  open files, no core dumps.

Isolation is checked by the parent, never reported by the child: before the harness may run the
program it waits for a per-run nonce on a pipe, and the parent sends it only after it has compared
the sandbox's namespaces (`/proc/<pid>/ns/*`) with its own from outside. If bubblewrap is missing,
fails, or the namespaces are not new, the program never runs and `SandboxUnavailable` says why
(fail closed). `isolation: none` on a code task runs programs as plain child processes instead
(the same harness and rlimits, none of the isolation), and results say so.

A program passes only when the harness (`harness.py`) writes that nonce on its own result pipe
after the program's last statement (the tests' `check(...)` call) returned: exit status means
nothing, so `raise SystemExit(0)`, `os._exit(0)` or printing something score 0. The nonce is never in
the program's source, argv, environment or files, and in the process it lives only where Python code
cannot reach it (harness.py says how, and what is left: hand-crafted bytecode reading memory). A
return value whose `__eq__` is always true still fools the tests' own `assert`s — no harness of
in-process tests rules that out; the sandbox bounds what such a program can do, not what it scores.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lmforge.api.evalsuite import CodeIsolation
from lmforge.trainer.errors import StageError
from lmforge.trainer.evaluate import seccomp

NOBODY = 65534
OUTPUT_LIMIT = 4096
"""Characters of stdout/stderr kept in an outcome."""
BWRAP_ENV = "LMFORGE_BWRAP"
"""Path of the bubblewrap binary (default: `bwrap` on PATH, then `/usr/bin/bwrap`)."""
PYTHON_ENV = "LMFORGE_SANDBOX_PYTHON"
"""The interpreter that runs programs (default the system `python3`)."""
WORK = "/sandbox"
"""The program's directory inside the sandbox."""
NAMESPACES = ("user", "pid", "net", "ipc", "uts", "mnt")
"""Namespaces the parent requires to differ from its own before a program may run."""
SETUP_SECONDS = 10.0
"""How long bubblewrap may take to report its child (not counted in the program's wall time)."""


class SandboxUnavailable(StageError):
    """The sandbox could not be established, so no program ran; retrying the pod cannot help."""

    def __init__(self, why: str) -> None:
        super().__init__(
            f"the code sandbox could not isolate programs ({why}); nothing was run. "
            "Install bubblewrap and allow unprivileged user namespaces, or set "
            "isolation: none on the task to run model-written code unsandboxed",
            retryable=False,
        )


@dataclass(frozen=True)
class Limits:
    """Resource limits of one execution (bytes, seconds, counts).

    Memory is capped per process (RLIMIT_AS: no cgroup is writable for an unprivileged stage), so one
    program holds at most `processes` × `memory_bytes` + 3 × `tmpfs_bytes` (4 GiB + 48 MiB by
    default); `code.execute` runs at most one program per core, up to 4 at once.
    """

    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 512 << 20
    """RLIMIT_AS of each process."""
    processes: int = 8
    """Processes and threads in the sandbox (RLIMIT_NPROC in its own user namespace)."""
    file_bytes: int = 16 << 20
    open_files: int = 64
    tmpfs_bytes: int = 16 << 20
    """Size of each private tmpfs: the work dir, `/tmp` and `/dev/shm`."""


@dataclass(frozen=True)
class Outcome:
    """How a program ended: `passed` only when the harness wrote the run's nonce after the tests."""

    passed: bool
    status: str
    """`passed`, `failed` (an exception, an exit before the end, a limit), `timeout`."""
    returncode: int | None
    output: str
    isolation: str
    """`bubblewrap` (namespaces checked by the parent) or `none`."""


_HARNESS = (Path(__file__).with_name("harness.py")).read_text(encoding="utf-8")
"""The in-sandbox side (see harness.py), run with `-c`: nothing of LMForge is readable in the sandbox."""


def interpreter() -> str:
    """The Python that runs programs: one every uid can execute, outside any home directory."""
    chosen = os.environ.get(PYTHON_ENV) or shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    return os.path.realpath(chosen or sys.executable)


def bwrap_path() -> str:
    return os.environ.get(BWRAP_ENV) or shutil.which("bwrap") or "/usr/bin/bwrap"


def _root_binds(python: str) -> list[str]:
    """A minimal read-only root: /usr, the top-level links or dirs into it, the interpreter's prefix."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    prefix = os.path.dirname(os.path.dirname(python))
    if prefix not in ("/", "/usr") and not prefix.startswith("/usr/"):
        args += ["--ro-bind", prefix, prefix]
    return args


def _bwrap_command(
    bwrap: str, python: str, limits: Limits, program_fd: int, info_fd: int, seccomp_fd: int
) -> list[str]:
    size = str(limits.tmpfs_bytes)
    return [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--seccomp",
        str(seccomp_fd),
        "--uid",
        str(NOBODY),
        "--gid",
        str(NOBODY),
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "HOME",
        WORK,
        "--setenv",
        "TMPDIR",
        "/tmp",
        "--setenv",
        "LANG",
        "C.UTF-8",
        *_root_binds(python),
        "--dev",
        "/dev",
        "--size",
        size,
        "--tmpfs",
        "/tmp",
        "--size",
        size,
        "--tmpfs",
        "/dev/shm",
        "--size",
        size,
        "--tmpfs",
        WORK,
        "--perms",
        "0644",
        "--file",
        str(program_fd),
        f"{WORK}/program.py",
        "--remount-ro",
        "/",
        "--chdir",
        WORK,
        "--info-fd",
        str(info_fd),
        "--",
    ]


def _rlimits(limits: Limits) -> dict[str, int]:
    return {
        "RLIMIT_CPU": limits.cpu_seconds,
        "RLIMIT_AS": limits.memory_bytes,
        "RLIMIT_NPROC": limits.processes,
        "RLIMIT_FSIZE": limits.file_bytes,
        "RLIMIT_NOFILE": limits.open_files,
        "RLIMIT_CORE": 0,
    }


def _read_info(fd: int, proc: subprocess.Popen[bytes]) -> int | None:
    """The sandbox's PID-1 (host PID) from bubblewrap's `--info-fd` JSON, or None if it gave none."""
    data, deadline = b"", time.monotonic() + SETUP_SECONDS
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
            try:
                return int(json.loads(data)["child-pid"])
            except (ValueError, KeyError, TypeError):
                continue
        elif proc.poll() is not None:
            break
    return None


def _namespaces_differ(pid: int) -> str | None:
    """Why the process `pid` is not isolated from this one (checked from outside), or None: every
    namespace in `NAMESPACES` must be new, and as root its host uid and gid must be nobody."""
    for ns in NAMESPACES:
        try:
            theirs, ours = os.readlink(f"/proc/{pid}/ns/{ns}"), os.readlink(f"/proc/self/ns/{ns}")
        except OSError as exc:
            return f"cannot inspect the sandbox's {ns} namespace: {exc.strerror}"
        if theirs == ours:
            return f"the sandbox shares the {ns} namespace with its parent"
    if os.geteuid() == 0:  # it must also have left root on the host, not only inside its namespace
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError as exc:
            return f"cannot inspect the sandbox's credentials: {exc.strerror}"
        ids = {
            line.split(":")[0]: line.split()[1:] for line in status.splitlines() if line.startswith(("Uid:", "Gid:"))
        }
        if any(int(i) != NOBODY for i in ids.get("Uid", ["0"]) + ids.get("Gid", ["0"])):
            return f"the sandbox runs as uid/gid {ids} on the host, not {NOBODY}"
    return None


def _kill(pidfd: int | None, proc: subprocess.Popen[bytes]) -> None:
    """Kill the sandbox's PID-1 (the kernel then kills everything in its PID namespace, `setsid()`
    or not) and the launcher's process group, and wait until PID-1 is gone. Sandboxed, signals go
    through a pidfd and to a group not yet reaped, so a recycled PID is never hit."""
    if pidfd is not None:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.returncode is None or pidfd is None:  # unsandboxed, the program's children are in the group
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()
    if pidfd is not None:
        select.select([pidfd], [], [], 10.0)  # readable once it has exited


def _read_all(fd: int, limit: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, limit)


class _Fds:
    """The file descriptors of one run, each closed exactly once."""

    def __init__(self) -> None:
        self.open: set[int] = set()

    def pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self.open |= {r, w}
        return r, w

    def memfd(self, name: str, data: bytes = b"") -> int:
        fd = os.memfd_create(name)
        self.open.add(fd)
        if data:
            os.write(fd, data)
            os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def close(self, *fds: int | None) -> None:
        for fd in fds:
            if fd is not None and fd in self.open:
                self.open.discard(fd)
                os.close(fd)

    def close_all(self) -> None:
        self.close(*list(self.open))


def _establish(proc: subprocess.Popen[bytes], info_r: int, fds: _Fds, out: int, cmd: str) -> int:
    """A pidfd of the sandbox's PID-1 once its namespaces are checked from outside; else the sandbox
    is killed (it is still waiting for its nonce: none of the program ran) and `SandboxUnavailable`."""
    pid = _read_info(info_r, proc)
    pidfd = why = None
    if pid is not None:
        try:
            pidfd = os.pidfd_open(pid)
            fds.open.add(pidfd)
            why = _namespaces_differ(pid)
        except OSError as exc:
            why = f"cannot watch the sandbox's process: {exc.strerror}"
    if pidfd is None or why is not None:
        _kill(pidfd, proc)
        said = _read_all(out, OUTPUT_LIMIT).decode("utf-8", "replace").strip().splitlines()
        raise SandboxUnavailable(
            why or f"{cmd} exited with status {proc.returncode}" + (f": {said[0]}" if said else "")
        )
    return pidfd


def run_program(
    source: str,
    limits: Limits = Limits(),
    isolation: CodeIsolation = CodeIsolation.SANDBOX,
    *,
    bwrap: str | None = None,
) -> Outcome:
    """Run `source` as a Python program and report how it ended; `SandboxUnavailable` if the sandbox
    cannot be established (with `isolation` SANDBOX nothing runs unsandboxed)."""
    nonce = secrets.token_hex(16).encode()
    python = interpreter()
    root = os.geteuid() == 0
    fds = _Fds()
    workdir: str | None = None
    try:
        nonce_r, nonce_w = fds.pipe()
        result_r, result_w = fds.pipe()
        out = fds.memfd("sandbox-output")  # stdout+stderr in memory, capped by RLIMIT_FSIZE
        rlimits = _rlimits(limits)
        if isolation is CodeIsolation.NONE:
            del rlimits["RLIMIT_NPROC"]  # it would count every process of the uid, not the program's
        cmd = [python, "-I", "-B", "-c", _HARNESS, str(nonce_r), str(result_w), json.dumps(rlimits)]
        child_fds = [nonce_r, result_w]
        info_r = info_w = None
        if isolation is CodeIsolation.NONE:
            workdir = tempfile.mkdtemp(prefix="lmforge-unsandboxed-")
            Path(workdir, "program.py").write_text(source, encoding="utf-8")
            if root:
                os.chown(workdir, NOBODY, NOBODY)
        else:
            info_r, info_w = fds.pipe()
            program = fds.memfd("sandbox-program", source.encode("utf-8"))
            try:
                policy = fds.memfd("sandbox-seccomp", seccomp.program())
            except seccomp.SeccompUnavailable as exc:
                raise SandboxUnavailable(str(exc)) from None
            cmd = _bwrap_command(bwrap or bwrap_path(), python, limits, program, info_w, policy) + cmd
            child_fds += [program, info_w, policy]
        drop = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if root else {}
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={},
                cwd=workdir,
                pass_fds=child_fds,
                start_new_session=True,
                **drop,
            )  # type: ignore[call-overload]
        except OSError as exc:
            if isolation is CodeIsolation.NONE:
                raise
            raise SandboxUnavailable(f"cannot start {cmd[0]}: {exc.strerror}") from None
        fds.close(*child_fds)
        pidfd = None
        try:
            if info_r is not None:
                pidfd = _establish(proc, info_r, fds, out, cmd[0])
            os.write(nonce_w, nonce)  # the go-ahead: only now does the harness run the program
            fds.close(nonce_w)
            try:
                code: int | None = proc.wait(timeout=limits.wall_seconds)
                status = "finished"
            except subprocess.TimeoutExpired:
                code, status = None, "timeout"
        finally:
            _kill(pidfd, proc)
        reported = os.read(result_r, 4096) if select.select([result_r], [], [], 0)[0] else b""
        passed = status == "finished" and code == 0 and reported.splitlines()[-1:] == [nonce]
        output = _read_all(out, OUTPUT_LIMIT).decode("utf-8", "replace")
        return Outcome(
            passed,
            "passed" if passed else "timeout" if status == "timeout" else "failed",
            code,
            output,
            "none" if isolation is CodeIsolation.NONE else "bubblewrap",
        )
    finally:
        fds.close_all()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


@functools.lru_cache(maxsize=8)
def _probed(bwrap: str, python: str) -> bool:
    outcome = run_program("pass", Limits(wall_seconds=SETUP_SECONDS), bwrap=bwrap)
    if not outcome.passed:
        raise SandboxUnavailable(f"a trivial program did not pass in it: {outcome.output.strip()[:200]!r}")
    return True


def probe(bwrap: str | None = None) -> None:
    """Check once per process (per bubblewrap and interpreter) that the sandbox can be established,
    so a task fails before any model time is spent; `SandboxUnavailable` if not."""
    _probed(bwrap or bwrap_path(), interpreter())
