"""`python hanging_upload.py SPEC MARKERS STEP DEADLINE_S`: the pretrain stage, with every upload of a
file of checkpoint step-STEP held forever once it has started, so a test can SIGKILL the process in
the middle of that upload. Uploads of other steps go through unchanged.

What the test waits for are files in the MARKERS directory, never the stage's progress lines (those
are throttled to one per 0.5 s, so a fast machine may print none between two saves):
- `uploading-step-STEP` once that upload has begun (and is held);
- `saving-step-N` when the training loop starts the save of step N — for N past STEP this proves
  training went on while step-STEP's upload was held (and that save now waits for it, by design).

So that a hang never outlives the test: the process dumps every thread's stack and exits after
DEADLINE_S seconds (faulthandler), dies with its parent (PR_SET_PDEATHSIG), and dumps the stacks on
SIGUSR1 (the test sends it before killing the process when something did not arrive in time).
"""

from __future__ import annotations

import ctypes
import faulthandler
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from lmforge.store import LocalStore
from lmforge.store.hashing import Readable

_PR_SET_PDEATHSIG = 1


def main() -> int:
    spec, markers, step, deadline_s = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    faulthandler.dump_traceback_later(deadline_s, exit=True)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    never = threading.Event()
    real_file, real_stream = LocalStore.put_file_hashed, LocalStore.put_stream_hashed

    def hold(store: LocalStore, key: str) -> None:
        if f"/checkpoints/step-{step}/" in store.url(key):
            (markers / f"uploading-step-{step}").touch()  # the upload has begun ...
            never.wait()  # ... and never ends (until the test kills the process)

    def file_held(self: LocalStore, key: str, path: Path) -> tuple[int, str]:
        hold(self, key)
        return real_file(self, key, path)

    def stream_held(self: LocalStore, key: str, stream: Readable) -> tuple[int, str]:
        stream.read(1024)  # part of the bytes are taken first
        hold(self, key)
        return real_stream(self, key, stream)

    LocalStore.put_file_hashed = file_held  # type: ignore[method-assign]
    LocalStore.put_stream_hashed = stream_held  # type: ignore[method-assign, assignment]

    from lmforge.trainer.pretrain.checkpoint import Checkpoints

    real_save = Checkpoints.save

    def save_marked(self: Checkpoints, engine: Any, at: int, *args: Any, **kwargs: Any) -> bool:
        (markers / f"saving-step-{at}").touch()
        return real_save(self, engine, at, *args, **kwargs)

    Checkpoints.save = save_marked  # type: ignore[method-assign, assignment]
    from lmforge.trainer.__main__ import main as stage_main

    return stage_main(["pretrain", "--spec", spec])


if __name__ == "__main__":
    sys.exit(main())
