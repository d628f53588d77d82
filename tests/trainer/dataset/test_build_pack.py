"""Tokenize + pack: the overlapped encode writes the same bytes as a serial encode, across batch
boundaries, and leaves the interpreter's GIL switch interval as it found it."""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lmforge.trainer.dataset import build
from lmforge.trainer.dataset.build import tokenize_and_pack
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
