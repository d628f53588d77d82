"""TensorBoard event files of a stage run's metrics, written without TensorBoard installed.

Neither `tensorboard` nor `tensorboardX` is in the trainer image, and scalars need only two small
protobuf messages, so this writes them itself. An event file is a sequence of TFRecords:

    uint64 length | uint32 masked_crc32c(length) | bytes event | uint32 masked_crc32c(event)

each `event` a serialized `tensorflow.Event` {1: wall_time (double), 2: step (int64), 3: file_version
(string), 5: summary {1: repeated value {1: tag (string), 2: simple_value (float)}}}.
`tensorboard --logdir <store>/tensorboard` then shows one run per directory.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import IO

from lmforge.api.contract import ProgressRecord, RecordType

FLUSH_EVERY_S = 5.0


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord uses."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(
    wall_time: float, step: int, *, scalars: dict[str, float] | None = None, file_version: str | None = None
) -> bytes:
    """One serialized `Event`."""
    out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        out += _field_bytes(3, file_version.encode())
    if scalars:
        values = b"".join(
            _field_bytes(1, _field_bytes(1, tag.encode()) + b"\x15" + struct.pack("<f", value))
            for tag, value in scalars.items()
        )
        out += _field_bytes(5, values)
    return out


def tfrecord(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))


class TensorBoardTracker:
    """Appends a run's metrics to `<directory>/events.out.tfevents.*` (local files: cheap, but still
    never allowed to fail the stage — an I/O error switches it off with one warning)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._file: IO[bytes] | None = None
        self._last_flush = 0.0
        self._broken = False

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            now = time.time()
            name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.0"
            self._file = (self.directory / name).open("ab")
            self._file.write(tfrecord(event(now, 0, file_version="brain.Event:2")))
        return self._file

    def record(self, record: ProgressRecord) -> None:
        if self._broken or not record.metrics:
            return
        try:
            f = self._open()
            f.write(tfrecord(event(time.time(), record.step, scalars=record.metrics)))
            if record.type is not RecordType.PROGRESS or time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
                f.flush()
                self._last_flush = time.monotonic()
        except OSError as exc:
            self._broken = True
            print(
                f"warning: tracking: TensorBoard events in {self.directory}: {exc}; not written further",
                file=sys.stderr,
                flush=True,
            )

    def close(self, timeout: float = 10.0) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
