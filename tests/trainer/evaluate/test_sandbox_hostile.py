"""Hostile programs against the sandbox, each run with the evaluator as root and as an unprivileged
user (uid 65534 via `setpriv`), each asserting from outside that the harm did not happen.

Where it matters a control runs the same program with `isolation: none` and shows the harm does
happen there, so a passing test is not a vacuous one.

What stops each: the parent's environment and other processes' `/proc/*/environ` — `--clearenv`
and no `/proc`; files created, renamed, linked or copied outside (also through `sh`, `os.system`,
ctypes) — a root of read-only binds with no host directory but `/usr`; loopback connections — a new
network namespace; `kill(-1, 9)` — a new PID namespace; a fork bomb — RLIMIT_NPROC counted in the
run's own user namespace; a memory bomb — RLIMIT_AS, measured from outside; filling `/tmp` and
`/dev/shm` — private size-capped tmpfs; a `setsid()` grandchild — killing the namespace's PID-1
(through a pidfd); a nested user namespace — the sandbox's seccomp filter; `SystemExit(0)`, `os._exit(0)`, fake nonces, stealing the nonce — the harness's
verdict hook (harness.py); a missing, failing or lying launcher — the parent's checks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmforge.api.evalsuite import CodeIsolation, EvalTask
from lmforge.trainer.evaluate import code, sandbox
from lmforge.trainer.evaluate.sandbox import NOBODY, Limits, Outcome, SandboxUnavailable, run_program
from lmforge.trainer.evaluate.tasks import CodeRow

from .conftest import ScriptedBackend

DRIVER = Path(__file__).with_name("sandbox_driver.py")
REPO = Path(__file__).resolve().parents[3]
ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def traversable() -> Iterator[None]:
    """Let uid 65534 reach this interpreter and the code under test (a venv under /root is not),
    restoring every directory's mode afterwards."""
    changed: list[tuple[Path, int]] = []
    for target in {Path(os.path.realpath(sys.executable)), Path(sys.prefix), REPO}:
        for parent in [target, *target.parents]:
            mode = parent.stat().st_mode
            if parent.is_dir() and not mode & stat.S_IXOTH:
                changed.append((parent, mode))
                parent.chmod(mode | stat.S_IXOTH)
    try:
        yield
    finally:
        for path, mode in changed:
            path.chmod(stat.S_IMODE(mode))


CALLERS = [
    pytest.param("root", marks=pytest.mark.skipif(not ROOT, reason="the evaluator runs as root only in CI")),
    pytest.param("nobody", marks=pytest.mark.skipif(not ROOT, reason="needs root to become uid 65534")),
]
POD = pytest.param("pod", marks=pytest.mark.skipif(not ROOT, reason="needs root to make /proc/sys read-only"))
"""uid 65534 with `/proc/sys` read-only in its mount namespace, as every container runtime mounts it:
the evaluate pod (bubblewrap's `--disable-userns` failed there, so no code task could run)."""
READ_ONLY_PROC_SYS = [
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@"',
    "sh",
]


def run_as(
    caller: str,
    source: str,
    limits: Limits = Limits(wall_seconds=5.0),
    isolation: CodeIsolation = CodeIsolation.SANDBOX,
    bwrap: str | None = None,
    env: dict[str, str] | None = None,
) -> Outcome:
    """`run_program` in this process (root), or in a driver started as uid 65534."""
    if caller == "root":
        return run_program(source, limits, isolation, bwrap=bwrap)
    job = {"source": source, "limits": dataclasses.asdict(limits), "isolation": isolation.value, "bwrap": bwrap}
    cmd = [
        "setpriv",
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        "env",
        "-i",
        "HOME=/tmp",
        f"PYTHONPATH={REPO}",
        *[f"{k}={v}" for k, v in (env or {}).items()],
        sys.executable,
        str(DRIVER),
    ]
    if caller == "pod":
        cmd = READ_ONLY_PROC_SYS + cmd
    done = subprocess.run(cmd, input=json.dumps(job), capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout)
    if "unavailable" in result:
        raise SandboxUnavailable(result["unavailable"].split("(", 1)[1].split(")")[0])
    return Outcome(**result)


@pytest.fixture
def outside() -> Iterator[Path]:
    """A world-writable directory on the host with one world-writable file: what a program reaching
    the host's filesystem could change."""
    path = Path(tempfile.mkdtemp(prefix="lmforge-outside-", dir="/tmp"))
    path.chmod(0o1777)
    victim = path / "victim.txt"
    victim.write_text("keep me")
    victim.chmod(0o666)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _untouched(path: Path) -> None:
    assert sorted(p.name for p in path.iterdir()) == ["victim.txt"]
    assert (path / "victim.txt").read_text() == "keep me"


def _processes_with(token: str) -> list[int]:
    """Live host PIDs, in a PID namespace other than ours, whose command line contains `token`
    (every process of a sandbox carries the harness's text in its command line)."""
    ours = os.readlink("/proc/self/ns/pid")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token.encode() in (entry / "cmdline").read_bytes() and os.readlink(entry / "ns" / "pid") != ours:
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state not in ("Z", "X"):
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


HARNESS_MARK = "result_fd"
"""A string of the harness's source, so in the command line of every sandboxed process."""


# --- reading secrets ------------------------------------------------------------------------------


@pytest.mark.parametrize("caller", CALLERS)
def test_the_parents_environment_cannot_be_read(
    caller: str, traversable: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = "canary-" + secrets.token_hex(8)
    monkeypatch.setenv("LMFORGE_CANARY", canary)
    program = f"""
import glob, os
print(os.environ.get("LMFORGE_CANARY"))
for path in glob.glob("/proc/*/environ") + ["/proc/{os.getpid()}/environ", "/proc/1/environ"]:
    try:
        print([v for v in open(path, "rb").read().decode(errors="replace").split(chr(0)) if "CANARY" in v])
    except OSError as exc:
        pass
for home in ("/root", "/home", "/work", "/etc"):
    print(home, os.path.exists(home))
"""
    outcome = run_as(caller, program, env={"LMFORGE_CANARY": canary})
    assert outcome.passed, outcome.output
    assert canary not in outcome.output
    assert "/root False" in outcome.output and "/etc False" in outcome.output
    if caller == "nobody":  # unconfined, the program reads the evaluator's /proc/<pid>/environ
        control = run_as(caller, program, isolation=CodeIsolation.NONE, env={"LMFORGE_CANARY": canary})
        assert canary in control.output


# --- writing outside ------------------------------------------------------------------------------


@pytest.mark.parametrize("caller", CALLERS)
def test_no_file_outside_the_work_dir_is_created_renamed_or_linked(
    caller: str, traversable: None, outside: Path
) -> None:
    program = f"""
import ctypes, os, shutil, subprocess
D = {str(outside)!r}
attempts = [
    lambda: os.close(os.open(D + "/created", os.O_WRONLY | os.O_CREAT, 0o666)),
    lambda: open(D + "/opened", "w").write("x"),
    lambda: open(D + "/victim.txt", "w").write("pwned"),
    lambda: os.rename(D + "/victim.txt", D + "/renamed"),
    lambda: (open("mine", "w").write("x"), os.rename("mine", D + "/moved")),
    lambda: os.link("program.py", D + "/hardlink"),
    lambda: os.symlink("/etc/passwd", D + "/symlink"),
    lambda: shutil.copy("program.py", D + "/copied"),
    lambda: subprocess.run(["sh", "-c", "echo x > " + D + "/subprocess"]),
    lambda: os.system("touch " + D + "/system"),
    lambda: ctypes.CDLL(None).open((D + "/ctypes").encode(), os.O_WRONLY | os.O_CREAT, 0o666),
    lambda: os.unlink(D + "/victim.txt"),
]
for attempt in attempts:
    try:
        attempt()
    except Exception as exc:
        print(type(exc).__name__, exc)
"""
    outcome = run_as(caller, program)
    assert outcome.isolation == "bubblewrap"
    _untouched(outside)
    control = run_as(caller, program, isolation=CodeIsolation.NONE)
    assert control.isolation == "none"
    assert (outside / "created").exists() and (outside / "system").exists()  # the same program, unconfined


@pytest.mark.parametrize("caller", CALLERS)
def test_filling_tmp_and_dev_shm_stays_in_the_sandbox(caller: str, traversable: None) -> None:
    token = secrets.token_hex(6)
    program = f"""
import os
for d in ("/tmp", "/dev/shm", "."):
    n = 0
    try:
        for n in range(1000):
            with open(f"{{d}}/fill-{token}-{{n}}", "wb") as f:
                f.write(b"x" * (1 << 20))
    except OSError as exc:
        print(d, n, exc.strerror)
"""
    outcome = run_as(caller, program, Limits(wall_seconds=20.0, tmpfs_bytes=8 << 20))
    assert outcome.passed, outcome.output
    for d in ("/tmp", "/dev/shm"):
        assert not list(Path(d).glob(f"fill-{token}-*"))
    assert outcome.output.count("No space left on device") == 3  # each of the three tmpfs hit its 8 MiB cap


# --- network and signals --------------------------------------------------------------------------


@pytest.mark.parametrize("caller", CALLERS)
def test_a_loopback_server_sees_no_connection(caller: str, traversable: None) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    port = server.getsockname()[1]
    program = f"""
import socket, urllib.request
for host in ("127.0.0.1", "localhost", "::1"):
    try:
        socket.create_connection((host, {port}), timeout=2).send(b"hello")
        print("connected", host)
    except OSError as exc:
        print(host, exc)
"""
    try:
        outcome = run_as(caller, program)
        assert "connected" not in outcome.output
        with pytest.raises(BlockingIOError):
            server.accept()
        control = run_as(caller, program, isolation=CodeIsolation.NONE)
        assert "connected 127.0.0.1" in control.output
    finally:
        server.close()


@pytest.mark.parametrize("caller", CALLERS)
def test_kill_everything_kills_nothing_outside(caller: str, traversable: None) -> None:
    # The sentinel runs as the uid the sandbox's processes have on the host, so only the PID
    # namespace stands between them.
    uid = NOBODY
    sentinel = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "60"])
    try:
        outcome = run_as(
            caller,
            "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\n"
            "except OSError as exc:\n    print(exc)\nprint('sent')",
        )
        assert "sent" in outcome.output
        time.sleep(0.2)
        assert sentinel.poll() is None, "the sentinel outside the sandbox was killed"
    finally:
        sentinel.kill()
        sentinel.wait()


# --- resource exhaustion --------------------------------------------------------------------------


@pytest.mark.parametrize("caller", CALLERS)
def test_a_fork_bomb_is_bounded_and_leaves_nothing(caller: str, traversable: None) -> None:
    program = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], len(_processes_with(HARNESS_MARK)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    try:
        outcome = run_as(caller, program, Limits(wall_seconds=3.0))
    finally:
        stop.set()
        watcher.join()
    assert not outcome.passed and outcome.status == "timeout"
    assert time.monotonic() - started < 30
    assert 0 < peak[0] <= Limits().processes
    assert not _processes_with(HARNESS_MARK)
    assert subprocess.run(["true"]).returncode == 0  # the host can still start processes


@pytest.mark.parametrize("caller", CALLERS)
def test_a_memory_bomb_stays_under_the_cap(caller: str, traversable: None) -> None:
    cap = 256 << 20
    program = """
hog = []
try:
    while True:
        hog.append(bytearray(16 << 20))
except MemoryError:
    print("capped at", len(hog) * 16, "MiB")
"""
    peak = [0]
    stop = threading.Event()

    def watch() -> None:  # the largest resident set of any sandboxed process, measured from outside
        while not stop.is_set():
            for pid in _processes_with(HARNESS_MARK):
                try:
                    rss = next(
                        int(line.split()[1])
                        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                        if line.startswith("VmRSS:")
                    )
                except (OSError, StopIteration):
                    continue
                peak[0] = max(peak[0], rss << 10)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        outcome = run_as(caller, program, Limits(wall_seconds=10.0, memory_bytes=cap))
    finally:
        stop.set()
        watcher.join()
    assert "capped at" in outcome.output, outcome.output
    assert 0 < peak[0] <= cap


@pytest.mark.parametrize("caller", CALLERS)
def test_a_setsid_grandchild_dies_with_the_run(caller: str, traversable: None) -> None:
    token = "grandchild-" + secrets.token_hex(6)
    program = f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/usr/bin/python3", ["python3", "-c", "import time; time.sleep(600)", {token!r}])
    os._exit(0)
time.sleep(600)
"""
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set() and not seen:
            seen.extend(_processes_with(token))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        outcome = run_as(caller, program, Limits(wall_seconds=4.0))
    finally:
        stop.set()
        watcher.join()
    assert outcome.status == "timeout"
    assert seen, "the grandchild never started, so the test proved nothing"
    assert not _processes_with(token) and not _processes_with(HARNESS_MARK)


# --- forging a pass -------------------------------------------------------------------------------

FORGERIES = {
    "system_exit": "    raise SystemExit(0)\n",
    "os_exit": "    import os\n    os._exit(0)\n",
    "fake_nonce": "    import os, secrets, sys\n    for fd in range(1, 32):\n        try:\n"
    "            os.write(fd, (secrets.token_hex(16) + '\\n').encode())\n"
    "        except OSError:\n            pass\n    sys.stdout.flush()\n    os._exit(0)\n",
    "kill_harness": "    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n",
    "correct": "    return a + b\n",
}
_CLAIM = (
    "    import os\n    for secret in found:\n        for fd in range(3, 64):\n            try:\n"
    "                os.write(fd, bytes(secret) + b'\\n')\n            except Exception:\n"
    "                pass\n    os._exit(0)\n"
)
NONCE_THEFTS = {  # each looks for the nonce (32 hex bytes) and writes whatever it found on every fd
    "frame_walk": "    import sys\n    found, f = [], sys._getframe()\n    while f is not None:\n"
    "        found += [v for v in f.f_locals.values() if isinstance(v, bytes)]\n"
    "        found += [v for v in f.f_globals.values() if isinstance(v, bytes)]\n"
    "        f = f.f_back\n" + _CLAIM,
    "closures": "    import sys, types\n    found = []\n    for m in list(sys.modules.values()):\n"
    "        for v in list(getattr(m, '__dict__', {}).values()):\n"
    "            cells = getattr(v, '__closure__', None)\n"
    "            for c in cells if isinstance(cells, tuple) else ():\n"
    "                try:\n                    found.append(c.cell_contents)\n"
    "                except ValueError:\n                    pass\n"
    "    found = [v for v in found if isinstance(v, bytes)]\n" + _CLAIM,
    "gc_walk": "    import gc\n    found = [o for o in gc.get_objects() if isinstance(o, bytes)]\n" + _CLAIM,
    "other_threads": "    import sys\n    found = [v for f in sys._current_frames().values() for v in f.f_locals.values()]\n"
    + _CLAIM,
    "tracer": "    import sys, threading\n    found = []\n"
    "    sys.settrace(lambda fr, ev, arg: found.extend(fr.f_locals.values()))\n"
    "    sys.audit('lmforge.finished')\n" + _CLAIM,
    "own_hook": "    import sys\n    found = []\n    sys.addaudithook(lambda e, a: found.append(e))\n" + _CLAIM,
    "ctypes_memory": "    import ctypes\n    found = [ctypes.string_at(id(0), 64)]\n" + _CLAIM,
    "proc_mem": "    found = [open('/proc/self/mem', 'rb').read(1)]\n" + _CLAIM,
    "signal_frame": "    import signal\n    found = []\n"
    "    signal.signal(signal.SIGALRM, lambda n, fr: found.extend(fr.f_locals.values()))\n" + _CLAIM,
    "fake_events": "    import sys\n    sys.audit('lmforge.started')\n    sys.audit('lmforge.finished')\n    found = []\n"
    + _CLAIM,
    "rerun_harness": "    import sys\n    main = sys.modules['__main__']\n    found = []\n"
    "    main._program(compile('pass', 'x', 'exec'), [], lambda: None)\n" + _CLAIM,
}


@pytest.mark.parametrize("caller", CALLERS)
def test_stealing_the_nonce_scores_zero(caller: str, traversable: None) -> None:
    rows = {
        name: CodeRow(name, "def add(a, b):\n", "def check(f):\n    assert f(2, 3) == 5\n", "add")
        for name in NONCE_THEFTS
    }
    outcomes = {name: run_as(caller, code.program(row, NONCE_THEFTS[name])) for name, row in rows.items()}
    assert {name for name, o in outcomes.items() if o.passed} == set(), {
        n: o.output[-300:] for n, o in outcomes.items()
    }
    assert outcomes["frame_walk"].returncode == 0  # it got as far as claiming, with nothing to claim


READ_HARNESS_MEMORY = r'''
import os, subprocess
child = """
import ctypes, os, sys
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(16)
local, remote = iovec(ctypes.cast(buf, ctypes.c_void_p), 16), iovec(0x10000, 16)
n = libc.process_vm_readv(int(sys.argv[1]), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
print("readv", n, os.strerror(ctypes.get_errno()))
"""
print(subprocess.run(["/usr/bin/python3", "-c", child, str(os.getpid())], capture_output=True, text=True).stdout)
'''


@pytest.mark.parametrize("caller", CALLERS)
def test_a_fresh_process_cannot_read_the_harness_memory(caller: str, traversable: None) -> None:
    # A new interpreter has none of the harness's audit hooks; the harness is non-dumpable, so the
    # kernel refuses before looking at the address (EFAULT would mean it was allowed to try).
    outcome = run_as(caller, READ_HARNESS_MEMORY)
    assert "readv -1 Operation not permitted" in outcome.output, outcome.output


ORDINARY = """
import asyncio, collections, dataclasses, enum, logging, threading, typing
from typing import List, TypeVar
T = TypeVar("T")
Point = collections.namedtuple("Point", "x y")
Colour = enum.Enum("Colour", "red green")
@dataclasses.dataclass
class Box:
    items: List[int]
logging.getLogger("x").warning("a warning is fine")
async def twice(v: int) -> int:
    return 2 * v
def check(candidate):
    assert candidate(Point(1, 2)) == 3
    assert asyncio.run(twice(2)) == 4 and Box([1]).items == [1] and Colour.red.value == 1
    t = threading.Thread(target=lambda: None)
    t.start(); t.join()
check(lambda p: p.x + p.y)
"""


@pytest.mark.parametrize("caller", [*CALLERS, POD])
def test_ordinary_programs_still_pass(caller: str, traversable: None) -> None:
    outcome = run_as(caller, ORDINARY)
    assert outcome.passed, outcome.output


NESTED = """
import subprocess
for argv in (["unshare", "--user", "--map-root-user", "id", "-u"], ["unshare", "--user", "--mount", "true"]):
    done = subprocess.run(argv, capture_output=True, text=True)
    print(done.returncode, done.stdout.strip(), done.stderr.strip())
"""


@pytest.mark.parametrize("caller", [*CALLERS, POD])
def test_a_nested_user_namespace_is_refused(caller: str, traversable: None) -> None:
    """A user namespace of its own would give the program every capability in it (mounts, the
    kernel's namespaced surface): the sandbox's seccomp filter refuses it, also where
    `/proc/sys` is read-only. The control shows the same program gets one without the sandbox."""
    outcome = run_as(caller, NESTED)
    lines = outcome.output.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("1 ") and "Operation not permitted" in line for line in lines), lines
    unconfined = run_as(caller, NESTED, isolation=CodeIsolation.NONE)
    assert unconfined.output.startswith("0 0"), unconfined.output  # root in a namespace of its own


@pytest.mark.parametrize("caller", CALLERS)
def test_exiting_early_with_success_scores_zero(caller: str, traversable: None) -> None:
    rows = [
        CodeRow(name, f"# {name}\ndef add(a, b):\n", "def check(f):\n    assert f(2, 3) == 5\n", "add")
        for name in FORGERIES
    ]
    if caller == "root":
        backend = ScriptedBackend(lambda prompt: FORGERIES[prompt.split("\n")[0][2:]])
        metrics = code.evaluate(
            backend, rows, samples=1, max_new_tokens=64, timeout_seconds=5.0, seed=0, advance=lambda n: None
        )
        assert metrics["pass@1"].value() == pytest.approx(1 / len(rows))  # only `correct`
        assert metrics["sandboxed"].value() == 1.0
    outcomes = {
        name: run_as(caller, code.program(row, FORGERIES[name])) for name, row in zip(FORGERIES, rows, strict=True)
    }
    assert {name for name, o in outcomes.items() if o.passed} == {"correct"}
    assert outcomes["system_exit"].returncode != 0 and outcomes["os_exit"].returncode == 0


# --- failing closed -------------------------------------------------------------------------------


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("broken", ["/bin/false", "/nonexistent/bwrap"])
def test_without_a_working_sandbox_nothing_runs(caller: str, broken: str, traversable: None, outside: Path) -> None:
    program = f"open({str(outside / 'ran')!r}, 'w').write('x')"
    with pytest.raises(SandboxUnavailable, match="could not isolate"):
        run_as(caller, program, bwrap=broken)
    _untouched(outside)
    unconfined = run_as(caller, program, isolation=CodeIsolation.NONE, bwrap=broken)
    assert unconfined.passed and unconfined.isolation == "none" and (outside / "ran").exists()


FAKE_BWRAP = """#!/usr/bin/python3
# Pretends to be bubblewrap: reports itself as the sandbox, then runs the command unconfined.
import json, os, sys
args = sys.argv[1:]
fd = int(args[args.index("--info-fd") + 1])
os.write(fd, json.dumps({"child-pid": os.getpid()}).encode())
command = args[args.index("--") + 1:]
os.execv(command[0], command)
"""


@pytest.mark.parametrize("caller", CALLERS)
def test_a_launcher_that_only_claims_isolation_is_caught_from_outside(
    caller: str, traversable: None, outside: Path
) -> None:
    fake = outside / "bin" / "bwrap"
    fake.parent.mkdir()
    fake.parent.chmod(0o755)
    fake.write_text(FAKE_BWRAP)
    fake.chmod(0o755)
    program = f"open({str(outside / 'ran')!r}, 'w').write('x')"
    with pytest.raises(SandboxUnavailable, match="shares the user namespace"):
        run_as(caller, program, bwrap=str(fake))
    assert not (outside / "ran").exists()  # it was held at the harness's gate and killed there


def test_a_code_task_fails_closed_and_isolation_none_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sandbox.BWRAP_ENV, "/bin/false")
    rows = [CodeRow("t", "def add(a, b):\n", "def check(f):\n    assert f(2, 3) == 5\n", "add")]
    backend = ScriptedBackend(lambda prompt: "    return a + b\n")
    with pytest.raises(SandboxUnavailable, match=r"/bin/false exited with status 1.*isolation: none"):
        code.evaluate(backend, rows, 1, 64, 5.0, 0, lambda n: None)
    assert backend.requests == []  # it failed before spending any model time
    metrics = code.evaluate(backend, rows, 1, 64, 5.0, 0, lambda n: None, CodeIsolation.NONE)
    assert {name: scores.value() for name, scores in metrics.items()} == {
        "pass@1": 1.0,
        "pass@k": 1.0,
        "sandboxed": 0.0,
    }
    task = EvalTask.model_validate({"name": "c", "type": "code", "dataUri": "x.jsonl", "isolation": "none"})
    assert task.isolation is CodeIsolation.NONE
    with pytest.raises(ValueError, match="isolation applies only to code tasks"):
        EvalTask.model_validate({"name": "m", "type": "multipleChoice", "isolation": "none"})
