"""`python hanging_upload.py SPEC MARKER STEP`: the pretrain stage, with every upload of a file of
checkpoint step-STEP held forever once it has started (MARKER is created then), so a test can SIGKILL
the process in the middle of that upload. Uploads of other steps go through unchanged."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from lmforge.store import LocalStore
from lmforge.store.hashing import Readable


def main() -> int:
    spec, marker, step = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    never = threading.Event()
    real_file, real_stream = LocalStore.put_file_hashed, LocalStore.put_stream_hashed

    def hold(store: LocalStore, key: str) -> None:
        if f"/checkpoints/step-{step}/" in store.url(key):
            marker.touch()  # the upload has begun ...
            never.wait()  # ... and never ends (until the test kills the process)

    def file_held(self: LocalStore, key: str, path: Path) -> tuple[int, str]:
        hold(self, key)
        return real_file(self, key, path)

    def stream_held(self: LocalStore, key: str, stream: Readable) -> tuple[int, str]:
        stream.read(1024)  # part of the bytes are taken first
        hold(self, key)
        return real_stream(self, key, stream)

    LocalStore.put_file_hashed = file_held  # type: ignore[method-assign]
    LocalStore.put_stream_hashed = stream_held  # type: ignore[method-assign]
    from lmforge.trainer.__main__ import main as stage_main

    return stage_main(["pretrain", "--spec", spec])


if __name__ == "__main__":
    sys.exit(main())
