"""Run untrusted Python (model-written code) so that it cannot harm the host.

Each program runs in its own temporary directory through a small launcher process that, before it
`exec`s the interpreter:

* moves into new **network, PID and IPC namespaces** (`unshare(2)`; as root directly, otherwise
  inside a new user namespace): the program sees only a downed loopback device, cannot see or
  signal host processes, and every process it forks dies when it does (it is PID 1 there);
* as root, **drops to uid/gid 65534** (nobody), so files outside its directory that are not
  world-writable cannot be changed or deleted; without root a Python audit hook refuses writes,
  deletions and sockets outside the directory instead (weaker: native code can bypass it);
* sets **rlimits**: CPU seconds, address space, processes (bounds a fork bomb), file size, open
  files, no core dumps; and asks the kernel to kill it if the launcher dies.

The host side enforces a wall-clock timeout by killing the whole process group, and always deletes
the directory. The environment is emptied, so no credentials leak into the program. Only the
standard library is available (the interpreter is `LMFORGE_SANDBOX_PYTHON`, default the system
`python3`, which nobody can execute even when the venv is in root's home).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534
OUTPUT_LIMIT = 4096
"""Characters of stdout/stderr kept in an outcome."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one execution."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30
    processes: int = 16
    file_bytes: int = 16 << 20
    open_files: int = 64


@dataclass(frozen=True)
class Outcome:
    """How a program ended: `passed` only on exit status 0 within the limits."""

    passed: bool
    status: str
    """`passed`, `failed` (non-zero exit or killed by a limit), `timeout`."""
    returncode: int | None
    output: str
    isolation: str
    """What confined it, e.g. `netns,pidns,ipcns,uid=65534,rlimits`."""


# The launcher runs as a fresh single-threaded interpreter (so fork/unshare are safe), configured by
# one JSON argument. It is passed with -c so that it needs no readable file on disk.
_LAUNCHER = r'''
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
NEWNET, NEWPID, NEWIPC, NEWUSER = 0x40000000, 0x20000000, 0x08000000, 0x10000000
root = os.geteuid() == 0
notes = []
flags = NEWNET | NEWPID | NEWIPC | (0 if root else NEWUSER)
if libc.unshare(flags) == 0:
    notes += ["netns", "pidns", "ipcns"] + ([] if root else ["userns"])
pid = os.fork()
if pid:
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) % 256 if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
if root:
    os.setgroups([]); os.setgid(cfg["uid"]); os.setuid(cfg["uid"])
    notes.append("uid=%d" % cfg["uid"])
else:
    notes.append("audit-hook")
libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG, after the uid change (which clears it)
for name, value in cfg["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
notes.append("rlimits")
with open(os.path.join(cfg["dir"], "isolation.txt"), "w") as f:
    f.write(",".join(notes))
os.chdir(cfg["dir"])
os.execve(cfg["python"], [cfg["python"], "-I", "-B", cfg["program"]], cfg["env"])
'''

# Without root the program guards itself (see the module docstring); prepended to the program.
_HOOK = r'''
def __lmforge_guard():
    import os, sys
    home = os.path.realpath(os.getcwd())
    def inside(path):
        try:
            p = os.path.realpath(os.fsdecode(path)) if not isinstance(path, int) else home
        except Exception:
            return False
        return p == home or p.startswith(home + os.sep)
    def hook(event, args):
        if event.startswith("socket.") and event not in ("socket.gethostname",):
            raise PermissionError("network access is disabled in the sandbox")
        if event == "open" and args[1] not in (None, "r", "rb", "rt") and not inside(args[0]):
            raise PermissionError("writing outside the sandbox directory")
        if event in ("os.remove", "os.rmdir", "os.rename", "os.truncate", "shutil.rmtree", "os.chmod",
                     "os.chown", "os.link", "os.symlink", "os.utime") and not inside(args[0]):
            raise PermissionError("changing files outside the sandbox directory")
    sys.addaudithook(hook)
__lmforge_guard()
del __lmforge_guard
'''


def interpreter() -> str:
    """The Python that runs programs: one every uid can execute."""
    chosen = os.environ.get("LMFORGE_SANDBOX_PYTHON") or shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    return chosen or sys.executable


def _user_tasks(uid: int) -> int:
    """Processes+threads this uid runs now (RLIMIT_NPROC counts them all for a non-root uid)."""
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if int(fields.get("Uid", "-1").split()[0]) == uid:
                count += int(fields.get("Threads", "1"))
    return count


def run_program(source: str, limits: Limits = Limits()) -> Outcome:
    """Run `source` as a Python program under the sandbox and report how it ended."""
    root = os.geteuid() == 0
    workdir = Path(tempfile.mkdtemp(prefix="lmforge-sandbox-"))
    try:
        program = workdir / "program.py"
        program.write_text(source if root else _HOOK + source, encoding="utf-8")
        if root:
            os.chown(workdir, NOBODY, NOBODY)
            os.chown(program, NOBODY, NOBODY)
        nproc = limits.processes if root else _user_tasks(os.getuid()) + limits.processes
        cfg = {
            "dir": str(workdir), "program": str(program), "python": interpreter(), "uid": NOBODY,
            "env": {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8"},
            "rlimits": {"RLIMIT_CPU": limits.cpu_seconds, "RLIMIT_AS": limits.memory_bytes,
                        "RLIMIT_NPROC": nproc, "RLIMIT_FSIZE": limits.file_bytes,
                        "RLIMIT_NOFILE": limits.open_files, "RLIMIT_CORE": 0},
        }
        out_path = workdir / "output.txt"
        with open(out_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(cfg)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env={}, start_new_session=True, close_fds=True)
            try:
                code: int | None = proc.wait(timeout=limits.wall_seconds)
                status = "passed" if code == 0 else "failed"
            except subprocess.TimeoutExpired:
                code, status = None, "timeout"
            finally:
                # Kills the launcher and whatever stayed in its group; the program (PID 1 of its
                # namespace, with a parent-death signal) takes every process it forked with it.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        output = out_path.read_bytes()[:OUTPUT_LIMIT].decode("utf-8", "replace")
        iso = workdir / "isolation.txt"
        isolation = iso.read_text() if iso.exists() else "none"
        return Outcome(status == "passed", status, code, output, isolation)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
