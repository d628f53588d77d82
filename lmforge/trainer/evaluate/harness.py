"""The in-sandbox side of a code run: started as `python -I -B -c <this file's text> NONCE_FD RESULT_FD
RLIMITS` by `sandbox.run_program` (inside bubblewrap, nothing of LMForge is importable, so it uses the
standard library only and is never imported).

It makes the process non-dumpable (no other process of the sandbox may read its memory), waits for
the nonce — the parent's go-ahead, sent only after it checked the namespaces — sets the rlimits, and
runs `program.py` in a second thread. The nonce then lives only in the closure of an audit hook that
nothing references (`sys` lists no hooks), which writes it on the result pipe when the event
`lmforge.finished` comes from the very frame that ran the program, after that `exec` returned — i.e.
after the program's last statement (the tests' `check(...)`) completed. A second hook refuses the ways
Python code could reach that closure or that frame's future: other threads' frames, tracing and
profiling, the garbage collector's object lists, more audit hooks, ctypes. Running the program off
the main thread keeps Python signal handlers (whose frame argument would be the hook's) away from it.

What remains is native: hand-crafted bytecode or marshal data that reads memory out of bounds — far
from "exit with status 0" or "print something", which is what this defeats (see sandbox.py).
"""

from __future__ import annotations

import os
import sys

BLOCKED = frozenset(
    {
        "sys._current_frames",
        "sys.settrace",
        "sys.setprofile",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
    }
)


def _verdict(nonce: bytes, result_fd: int) -> object:
    """The hook that holds the nonce (its only references are this closure and the interpreter)."""
    import gc

    ran: list[object] = []

    def hook(event: str, args: tuple[object, ...]) -> None:
        if type(event) is not str or not event.startswith("lmforge."):
            return  # nothing the program controls runs in this frame
        enabled = gc.isenabled()
        gc.disable()  # no finaliser of the program may run inside this frame
        try:
            caller = sys._getframe(1)
            if event == "lmforge.started" and not ran:
                ran.append(caller)
            elif event == "lmforge.finished" and ran and caller is ran[0]:
                os.write(result_fd, nonce + b"\n")
        except BaseException:
            pass
        finally:
            if enabled:
                gc.enable()

    return hook


def _policy(event: str, args: tuple[object, ...]) -> None:
    if event in BLOCKED or event.startswith("ctypes."):
        raise PermissionError(f"{event} is not available in the sandbox")
    if event == "sys.addaudithook":
        raise RuntimeError("no more audit hooks in the sandbox")  # RuntimeError: the addition is refused


def _setup() -> object:
    import ctypes
    import json
    import resource

    nonce_fd, result_fd, rlimits = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    os.set_inheritable(result_fd, False)
    if ctypes.CDLL(None).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 0; inherited by forks
        os._exit(124)
    nonce = b""
    while chunk := os.read(nonce_fd, 64):
        nonce += chunk
    os.close(nonce_fd)
    if not nonce:
        os._exit(125)
    for name, value in rlimits.items():
        resource.setrlimit(getattr(resource, name), (value, value))
    with open("program.py", encoding="utf-8") as f:
        code = compile(f.read(), "program.py", "exec")
    sys.addaudithook(_verdict(nonce, result_fd))  # type: ignore[arg-type]
    sys.addaudithook(_policy)
    del sys.argv[1:]
    return code


def _program(code: object, ok: list[bool], release: object, audit: object = sys.audit) -> None:
    """Runs in the second thread; its frame is the one the verdict hook trusts."""
    try:
        audit("lmforge.started")  # type: ignore[operator]
        exec(code, {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__})  # type: ignore[arg-type]
        sys.stdout.flush()
        sys.stderr.flush()
        audit("lmforge.finished")  # type: ignore[operator]
        ok.append(True)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):  # the main thread leaves with os._exit: flush here
            try:
                stream.flush()
            except BaseException:
                pass
        release()  # type: ignore[operator]


if __name__ == "__main__":
    import _thread

    _done = _thread.allocate_lock()
    _done.acquire()
    _ok: list[bool] = []
    _thread.start_new_thread(_program, (_setup(), _ok, _done.release))
    try:
        _done.acquire()  # in C: no Python of the program runs on this thread from here on
    except BaseException:
        os._exit(1)
    os._exit(0 if _ok else 1)
