"""Exact and near dedup, decontamination, and the shard format's round trip."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lmforge.api.dataset import Decontamination, NearDedup
from lmforge.store import LocalStore
from lmforge.trainer.dataset.build import tokenize_and_pack, write_all_shards
from lmforge.trainer.dataset.decontam import build as build_decontam
from lmforge.trainer.dataset.dedup import MinHasher, exact_duplicates, exact_hash, lsh_params, near_duplicates
from lmforge.trainer.shards import FORMAT, ShardIndex, Shards, row_order

_WORDS = [f"w{i}" for i in range(3000)]


def _docs(n: int, seed: int = 0, length: int = 120) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(length)) for _ in range(n)]


def _edit(text: str, k: int, seed: int) -> str:
    rng = random.Random(seed)
    words = text.split()
    for _ in range(k):
        words[rng.randrange(len(words))] = "edited"
    return " ".join(words)


def test_exact_dedup_ignores_case_punctuation_and_spacing() -> None:
    texts = ["Hello, World!", "hello   world", "HELLO WORLD.", "hello there", "Hello there"]
    drop = exact_duplicates(np.array([exact_hash(t) for t in texts], dtype=np.uint64))
    assert drop.tolist() == [False, True, True, False, True]


def test_near_dedup_finds_planted_clusters_and_keeps_the_first() -> None:
    base = _docs(300)
    planted = {i: [_edit(base[i], 2, s) for s in range(2)] for i in range(0, 60, 3)}  # 20 clusters of 3, J≈0.84
    texts = list(base)
    for copies in planted.values():
        texts += copies
    spec = NearDedup(threshold=0.7)
    hasher = MinHasher(spec)
    sigs = np.stack([hasher.signature(t) for t in texts])
    bands, rows = lsh_params(spec)
    result = near_duplicates(sigs, bands, rows, spec.threshold)
    assert not result.drop[:300].any()  # originals come first and are kept; unrelated docs untouched
    assert result.drop[300:].sum() >= 38  # ≥ 95% of the 40 planted copies
    assert result.clusters >= 19
    # Same input in a different row order (as another worker split would give) -> same survivors.
    perm = np.random.default_rng(1).permutation(len(texts))
    again = near_duplicates(sigs[perm], bands, rows, spec.threshold)
    kept_texts = {texts[i] for i in np.flatnonzero(~result.drop)}
    kept_again = {texts[perm[i]] for i in np.flatnonzero(~again.drop)}
    assert len(kept_again) == len(kept_texts)


def test_near_dedup_respects_alive_mask_and_explicit_bands() -> None:
    base = _docs(20, seed=3)
    texts = [*base, base[0], _edit(base[1], 2, 0)]
    hasher = MinHasher(NearDedup(num_perm=64, bands=16, rows=4))
    sigs = np.stack([hasher.signature(t) for t in texts])
    alive = np.ones(len(texts), dtype=bool)
    alive[20] = False  # already dropped as an exact duplicate
    result = near_duplicates(sigs, 16, 4, 0.7, alive=alive)
    assert result.drop.tolist() == [False] * 21 + [True]


def test_signatures_are_identical_across_instances_and_batching() -> None:
    texts = [*_docs(5), "two words", ""]
    a, b = MinHasher(NearDedup()), MinHasher(NearDedup())
    assert np.array_equal(a.signature(texts[0]), b.signature(texts[0]))
    batch = a.signatures(texts)  # the vectorised path equals datasketch's MinHash document by document
    assert batch.shape == (7, 112) and np.array_equal(batch, np.stack([b.signature(t) for t in texts]))


def test_decontamination_drops_overlapping_documents() -> None:
    question = "which river flows through the quiet valley of the old stone town near the northern sea"
    suite = {"tasks": [{"name": "qa", "type": "generation", "dataUri": "qa.jsonl"}]}
    files = {"qa.jsonl": '{"prompt": "' + question + '", "answer": "the Quell"}\n', "extra.txt": "short line\n"}
    d = build_decontam(
        Decontamination(eval_suite_refs=[{"name": "s"}], uris=["extra.txt"], ngram=13),
        {"EvalSuite/s": suite},
        files.__getitem__,
    )
    assert d.contaminated("Intro. " + question.upper() + "? Yes, it does.")
    assert not d.contaminated("which river flows through the quiet valley is a question")
    assert d.settings()["tooShort"] == 2  # "the Quell" and "short line"


def test_shards_round_trip_to_the_token_stream(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        _docs(50, length=30),
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    texts = _docs(300, seed=5, length=25)
    docs = [(i, "s", t) for i, t in enumerate(texts)]
    stats = tokenize_and_pack(docs, tok, tmp_path / "packed.bin", 16, tok.get_vocab_size(), 1)
    expected = np.concatenate([np.array([*tok.encode(t, add_special_tokens=False).ids, 1]) for t in texts])
    assert stats.tokens == len(expected) and stats.rows == len(expected) // 16 and stats.tail == len(expected) % 16
    store = LocalStore(tmp_path / "store")
    index, files = write_all_shards(
        store,
        tmp_path / "packed.bin",
        stats.rows,
        16,
        tok.get_vocab_size(),
        0.1,
        seed=3,
        shard_sequences=50,
        fingerprint="fp",
        scratch=tmp_path / "scratch",
    )
    built = ShardIndex(
        format=FORMAT,
        dtype="uint16",
        seq_length=16,
        vocab_size=tok.get_vocab_size(),
        bos_id=0,
        eos_id=1,
        pad_id=2,
        **index,
    )
    (tmp_path / "store" / "shards" / "index.json").write_bytes(built.to_bytes())
    reader = Shards(tmp_path / "store" / "shards")
    reader.verify()
    assert len(reader.validation) == round(stats.rows * 0.1)
    assert len(reader.train) + len(reader.validation) == stats.rows
    assert all(e.sequences <= 50 for e in index["train"])
    rows = np.stack([*reader.validation, *reader.train])  # permuted order
    unshuffled = np.empty_like(rows)
    unshuffled[row_order(stats.rows, 3)] = rows
    assert np.array_equal(unshuffled.reshape(-1), expected[: stats.rows * 16])
    assert np.array_equal(reader.train[-1], reader.train[len(reader.train) - 1])
    # A second call with the same fingerprint rewrites nothing.
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "store" / "shards").glob("*.bin")}
    write_all_shards(
        store,
        tmp_path / "packed.bin",
        stats.rows,
        16,
        tok.get_vocab_size(),
        0.1,
        seed=3,
        shard_sequences=50,
        fingerprint="fp",
        scratch=tmp_path / "scratch",
    )
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "store" / "shards").glob("*.bin")}
    assert before == after and set(files) == set(before)


def test_mixing_weights_repeat_documents_deterministically() -> None:
    from lmforge.trainer.dataset.build import repeats

    draws = [repeats(2.5, 7, key) for key in range(4000)]
    assert set(draws) == {2, 3} and abs(np.mean(draws) - 2.5) < 0.05
    assert draws == [repeats(2.5, 7, key) for key in range(4000)]
    assert abs(np.mean([repeats(0.25, 7, key) for key in range(4000)]) - 0.25) < 0.03


def test_curation_in_a_process_pool_matches_one_process(tmp_path: Path) -> None:
    """Chunks curated by forked pool processes give the same bytes, arrays and counts as in-process."""
    import io

    import zstandard

    from lmforge.api.dataset import DatasetSpec
    from lmforge.trainer.dataset import curate as curate_mod
    from lmforge.trainer.dataset.curate import Curator, curate
    from lmforge.trainer.dataset.readers import Document
    from lmforge.trainer.dataset.sourcing import OptOutList

    rng = random.Random(3)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu".split()
    texts = [
        " ".join(rng.choice(words) for _ in range(rng.randint(2, 60))) + f" mail{i}@x.example.com" for i in range(300)
    ]
    texts += texts[:40]  # exact duplicates
    spec = DatasetSpec.model_validate(
        {"sources": [{"name": "s", "uri": "x", "license": "CC0-1.0"}], "quality": {"minWords": 5}}
    )
    outputs = []
    for processes in (1, 2):
        curator = Curator(spec, OptOutList.from_spec(spec.opt_out, lambda _: ""), lambda _: "", None)
        docs = (Document(t, None, "s", 0, i, len(t)) for i, t in enumerate(texts))
        docs_file, sig_file = io.BytesIO(), io.BytesIO()
        seen: list[int] = []
        old, curate_mod.CHUNK = curate_mod.CHUNK, 32  # several chunks in flight
        try:
            out, totals = curate(
                docs,
                curator,
                MinHasher(spec.dedup.near),
                {"s": 0},
                docs_file,
                sig_file,
                lambda n, _b, _s, seen=seen: seen.append(n),
                processes,
            )
        finally:
            curate_mod.CHUNK = old
        lines = (
            io.BufferedReader(
                zstandard.ZstdDecompressor().stream_reader(io.BytesIO(docs_file.getvalue()), read_across_frames=True)
            )
            .read()
            .splitlines()
        )
        outputs.append((out, totals, lines, sig_file.getvalue(), seen))
    (a, ta, la, sa, pa), (b, tb, lb, sb, pb) = outputs
    assert a == b and la == lb and sa == sb and pa == pb and pa[-1] == len(texts)
    assert len(la) == len(a.keys) and len(sa) == len(a.keys) * spec.dedup.near.num_perm * 4
    assert {n: c.wire() for n, c in ta.counts.items()} == {n: c.wire() for n, c in tb.counts.items()}
    assert ta.pii == tb.pii and ta.pii["email"] == len(a.keys) > 0
    assert ta.counts["s"].steps["read"][0] == len(texts)


@pytest.mark.skipif(os.geteuid() != 0, reason="a new PID namespace needs root (CI runs as root)")
def test_the_curation_pool_works_when_the_stage_is_pid_1(tmp_path: Path) -> None:
    """In a container the stage is PID 1: its pool workers used to take that for an orphaned
    parent and exit, and the pool re-forked them forever. Run as PID 1 of a new PID namespace."""
    script = tmp_path / "pid1.py"
    script.write_text(
        textwrap.dedent("""
        import io, os
        from lmforge.api.dataset import DatasetSpec
        from lmforge.trainer.dataset.curate import Curator, curate
        from lmforge.trainer.dataset.dedup import MinHasher
        from lmforge.trainer.dataset.readers import Document
        from lmforge.trainer.dataset.sourcing import OptOutList
        assert os.getpid() == 1
        spec = DatasetSpec.model_validate({"sources": [{"name": "s", "uri": "x", "license": "CC0-1.0"}]})
        curator = Curator(spec, OptOutList.from_spec(spec.opt_out, lambda _: ""), lambda _: "", None)
        docs = [Document(f"doc {i} " + "word " * 50, None, "s", 0, i, 300) for i in range(600)]
        out, _ = curate(iter(docs), curator, MinHasher(spec.dedup.near), {"s": 0}, io.BytesIO(), io.BytesIO(),
                        lambda *a: None, 2)
        print("curated", len(out.keys))
    """)
    )
    proc = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    assert proc.returncode == 0 and "curated" in proc.stdout, proc.stderr[-2000:]
