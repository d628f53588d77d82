"""The shard format's one model, writer and reader: the bytes stay what readers were built against."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmforge.trainer.errors import InvalidInput
from lmforge.trainer.shards import FORMAT, INDEX, ShardEntry, ShardIndex, Shards


def _index(**over: object) -> ShardIndex:
    fields: dict[str, object] = dict(
        format=FORMAT,
        dtype="uint16",
        seq_length=4,
        vocab_size=300,
        bos_id=0,
        eos_id=1,
        pad_id=None,
        train=[ShardEntry(file="train-00000.bin", sequences=3, sha256="a" * 64)],
        validation=[ShardEntry(file="val-00000.bin", sequences=1, sha256="b" * 64)],
        tokens={"train": 12, "validation": 4},
        packed_tokens=17,
        dropped_tail_tokens=1,
        seed=7,
    )
    fields.update(over)
    return ShardIndex.model_validate(fields)


def test_index_bytes_are_the_dict_the_dataset_stage_used_to_dump() -> None:
    # What dataset/stage.py wrote inline before the model existed: key order and layout included.
    before = {
        "format": FORMAT,
        "dtype": "uint16",
        "seq_length": 4,
        "vocab_size": 300,
        "bos_id": 0,
        "eos_id": 1,
        "pad_id": None,
        "train": [{"file": "train-00000.bin", "sequences": 3, "sha256": "a" * 64}],
        "validation": [{"file": "val-00000.bin", "sequences": 1, "sha256": "b" * 64}],
        "tokens": {"train": 12, "validation": 4},
        "packed_tokens": 17,
        "dropped_tail_tokens": 1,
        "seed": 7,
    }
    assert _index().to_bytes() == json.dumps(before, indent=2).encode() + b"\n"


def _write(root: Path, index: ShardIndex, train: np.ndarray, val: np.ndarray) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    train.tofile(root / "train-00000.bin")
    val.tofile(root / "val-00000.bin")
    (root / INDEX).write_bytes(index.to_bytes())
    return root


def test_reader_maps_both_splits_and_samples_reproducibly(tmp_path: Path) -> None:
    train = np.arange(12, dtype=np.uint16).reshape(3, 4)
    val = np.full((1, 4), 9, dtype=np.uint16)
    shards = Shards(_write(tmp_path, _index(), train, val))
    assert len(shards.train) == 3 and len(shards.validation) == 1 and shards.seq_length == 4
    assert np.array_equal(shards.train[-1], train[2]) and shards.train.head(2).dtype == np.int64
    assert np.array_equal(shards.validation.head(), val)
    draws = shards.train.sample(np.random.default_rng(3), 5)
    assert np.array_equal(draws, train[np.random.default_rng(3).integers(0, 3, size=5)])
    assert shards.train.max_token_id() == 11
    with pytest.raises(InvalidInput, match="sha256 mismatch"):
        shards.verify()


def test_reader_rejects_a_foreign_index_and_a_ragged_file(tmp_path: Path) -> None:
    (tmp_path / INDEX).write_text('{"format": "other", "dtype": "uint16", "seq_length": 4, "vocab_size": 3}')
    with pytest.raises(InvalidInput, match="format"):
        Shards(tmp_path)
    with pytest.raises(InvalidInput, match="cannot read"):
        Shards(tmp_path / "absent")
    _write(tmp_path, _index(), np.arange(10, dtype=np.uint16), np.zeros(4, dtype=np.uint16))
    with pytest.raises(InvalidInput, match="not a multiple of seq_length 4"):
        Shards(tmp_path)


def test_an_empty_split_is_named(tmp_path: Path) -> None:
    shards = Shards(_write(tmp_path, _index(validation=[]), np.zeros((3, 4), np.uint16), np.zeros(0, np.uint16)))
    with pytest.raises(InvalidInput, match="no validation rows"):
        shards.validation.head(4)


def test_newer_fields_are_ignored_by_this_reader(tmp_path: Path) -> None:
    raw = json.loads(_index().to_bytes())
    (tmp_path / INDEX).write_text(json.dumps({**raw, "added_later": {"x": 1}}))
    assert ShardIndex.load(tmp_path) == _index()
