"""Tokenize + pack + write: the overlapped encode writes the same bytes as a serial encode, across batch
boundaries; the packed file and the shards are byte for byte the ones recorded before the pipeline was
reworked; and the interpreter's GIL switch interval is left as it was found."""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lmforge.store import LocalStore
from lmforge.trainer.dataset import build
from lmforge.trainer.dataset.build import tokenize_and_pack, write_all_shards
from lmforge.trainer.shards import Packer

_WORDS = [f"w{i}" for i in range(500)]


def _tokenizer() -> object:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    rng = random.Random(0)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        [" ".join(rng.choice(_WORDS) for _ in range(30)) for _ in range(50)],
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|bos|>", "<|eos|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    return tok


def test_overlapped_pack_is_byte_identical_to_a_serial_encode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "BATCH", 7)  # many batches, so the overlap crosses many boundaries
    tok = _tokenizer()
    rng = random.Random(1)
    texts = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 40))) for _ in range(101)]
    stats = tokenize_and_pack(
        [(i, "ab"[i % 2], t) for i, t in enumerate(texts)], tok, tmp_path / "packed.bin", 16, 400, 1
    )
    with open(tmp_path / "serial.bin", "wb") as f:
        packer = Packer(f, 16, np.dtype(np.uint16), 1)
        for t in texts:
            packer.add([tok.encode(t, add_special_tokens=False).ids])  # type: ignore[attr-defined]
    assert (tmp_path / "packed.bin").read_bytes() == (tmp_path / "serial.bin").read_bytes()
    assert (stats.rows, stats.tokens, stats.tail, stats.documents) == (packer.rows, packer.tokens, packer.tail, 101)
    assert sum(stats.tokens_by_source.values()) == stats.tokens


# Recorded from tokenize_and_pack + write_all_shards as of commit 91c9966 (before the pipeline rework),
# on the corpus and tokenizer below: sha256 of packed.bin, and of the "file sequences sha256" lines of
# every shard entry (validation then train).
RECORDED_PACKED = "eb9def45de2ad3bd534243475d95ff4b87dab4046061b4586c39bbf6926e5603"
RECORDED_SHARDS = "d31e756372f351cc1afbb765f4be0456810aae49617824f2fbfb51e15da663be"
RECORDED_STATS = (7601, 243257, 25, 3000, 422398, {"a": 83018, "b": 79903, "c": 80336})


@pytest.mark.parametrize("batch", [7, 1024])
def test_packed_file_and_shards_are_the_recorded_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    monkeypatch.setattr(build, "BATCH", batch)
    tok = _tokenizer()
    rng = random.Random(3)
    texts = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(0, 60))) for _ in range(3000)]
    stats = tokenize_and_pack(
        [(i, "abc"[i % 3], t) for i, t in enumerate(texts)], tok, tmp_path / "packed.bin", 32, 400, 1
    )
    index, files = write_all_shards(
        LocalStore(tmp_path / "store"),
        tmp_path / "packed.bin",
        stats.rows,
        32,
        400,
        0.05,
        1234,
        500,
        "fp",
        tmp_path / "s",
    )
    assert hashlib.sha256((tmp_path / "packed.bin").read_bytes()).hexdigest() == RECORDED_PACKED
    assert (
        stats.rows,
        stats.tokens,
        stats.tail,
        stats.documents,
        stats.bytes,
        stats.tokens_by_source,
    ) == RECORDED_STATS
    lines = [f"{e.file} {e.sequences} {e.sha256}" for split in ("validation", "train") for e in index[split]]
    assert len(lines) == 16 and hashlib.sha256("\n".join(lines).encode()).hexdigest() == RECORDED_SHARDS
    for entry in index["validation"] + index["train"]:  # the stored files are the bytes the index names
        stored = (tmp_path / "store" / "shards" / entry.file).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == entry.sha256 == files[entry.file].sha256


def test_switch_interval_is_restored_even_when_reading_fails(tmp_path: Path) -> None:
    tok = _tokenizer()
    before = sys.getswitchinterval()
    tokenize_and_pack([(0, "s", "w1 w2 w3")], tok, tmp_path / "a.bin", 4, 400, 1)
    assert sys.getswitchinterval() == before

    def broken() -> Iterator[tuple[int, str, str]]:
        yield 0, "s", "w1 w2"
        assert sys.getswitchinterval() == pytest.approx(build.SWITCH_INTERVAL_S)  # shortened while the overlap runs
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        tokenize_and_pack(broken(), tok, tmp_path / "b.bin", 4, 400, 1)
    assert sys.getswitchinterval() == before


class _FailingStore(LocalStore):
    """A real local store whose upload of one shard fails (the disk filled, the network went)."""

    def __init__(self, root: Path, fail: str) -> None:
        super().__init__(root)
        self.fail = fail
        self.uploaded: list[str] = []

    def put_file(self, key: str, path: Path) -> None:
        if key == f"shards/{self.fail}":
            raise OSError("upload refused")
        super().put_file(key, path)
        self.uploaded.append(key)


def test_a_failed_shard_upload_leaves_markers_only_for_finished_shards_and_a_rerun_writes_the_rest(
    tmp_path: Path,
) -> None:
    rows, seq = 1200, 8
    np.arange(rows * seq, dtype="<u2").tofile(tmp_path / "packed.bin")
    args = (tmp_path / "packed.bin", rows, seq, 400, 0.1, 7, 100, "fp", tmp_path / "scratch")
    store = _FailingStore(tmp_path / "store", fail="train-00004.bin")
    with pytest.raises(OSError, match="upload refused"):
        write_all_shards(store, *args)
    done = sorted(p.name.removesuffix(".json") for p in (tmp_path / "store" / "work" / "shards-done").iterdir())
    assert "train-00004.bin" not in done and len(done) >= 1
    assert done == sorted(k.removeprefix("shards/") for k in store.uploaded)  # a marker only after its upload
    for name in done:
        assert (tmp_path / "store" / "shards" / name).is_file()

    rerun = _FailingStore(tmp_path / "store", fail="")
    index, _ = write_all_shards(rerun, *args)
    assert sorted(k.removeprefix("shards/") for k in rerun.uploaded) == sorted(
        e.file for e in index["validation"] + index["train"] if e.file not in done
    )
    clean, _ = write_all_shards(LocalStore(tmp_path / "clean"), *args)
    assert index == clean  # the resumed shards are the bytes of an uninterrupted write
