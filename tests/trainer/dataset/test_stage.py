"""The Dataset stage end to end, as `python -m lmforge.trainer dataset --spec FILE` processes."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from lmforge.store import LocalStore, is_complete, read_manifest
from lmforge.trainer.shards import Shards

from .helpers import TINY, TINY_CORPUS, dataset_resource, run_stage, start_stage, write_stage_spec

SMALL = {
    "quality": {"minWords": 5},
    "tokenizer": {"vocabSize": 512},
    "seqLength": 64,
    "validationFraction": 0.05,
    "shardSequences": 256,
    "optOut": {"domains": ["optout.example.org"]},
}


def _split_corpus(src: Path, out: Path, files: int, lines: int) -> None:
    rows = src.read_text().splitlines()[:lines]
    out.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (out / f"part-{i}.jsonl").write_text("\n".join(rows[i::files]) + "\n")


def _check_card_adds_up(card: dict[str, Any]) -> None:
    for s in card["sources"]:
        dropped = sum(v["documents"] for v in s["dropped"].values())
        assert s["read"]["documents"] == dropped + s["kept"]["documents"], s["name"]
        remaining = [st["documents"] for st in s["steps"]]
        assert remaining == sorted(remaining, reverse=True)  # each step only removes


def test_tiny_example_end_to_end(tmp_path: Path) -> None:
    resource = yaml.safe_load((TINY / "01-dataset.yaml").read_text())
    spec = write_stage_spec(tmp_path / "spec.json", resource, tmp_path / "store", base_dir=TINY)
    started = time.monotonic()
    proc = run_stage(spec, tmp_path / "work")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - started < 60
    out = tmp_path / "store" / "runs" / "ds"
    result = json.loads((out / "result.json").read_text())
    assert set(result["artifacts"]) == {"tokenizer", "shards", "card"}
    store = LocalStore(out)
    assert all(is_complete(store, name) for name in ("tokenizer", "shards", "card"))
    m = result["metrics"]
    for key in (
        "documents",
        "tokens",
        "train_sequences",
        "validation_sequences",
        "bytes",
        "docs_per_second",
        "bytes_per_second",
        "dropped_opt_out",
        "dropped_toxicity",
        "dropped_exact_dedup",
    ):
        assert key in m, key
    assert m["dropped_opt_out"] == 40 and m["dropped_toxicity"] == 30 and m["dropped_exact_dedup"] == 60
    assert m["dropped_near_dedup"] >= 70  # of 80 planted near copies
    card = json.loads((out / "card" / "card.json").read_text())
    _check_card_adds_up(card)
    assert card["pii"]["redactions"]["email"] > 0 and card["pii"]["redactions"]["phone"] > 0
    assert card["sources"][0]["license"] == "CC0-1.0" and (out / "card" / "card.md").read_text().startswith("# ")
    reader = Shards(out / "shards")
    reader.verify()
    assert reader.index.dtype == "uint16" and reader.seq_length == 128
    assert len(reader.train) == m["train_sequences"] and len(reader.validation) == m["validation_sequences"]
    assert card["sources"][0]["kept"]["tokens"] == m["tokens"]

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert tok.eos_token_id == reader.index.eos_id and len(tok) == 1024
    text = tok.decode(np.concatenate(list(reader.train)).tolist())
    assert "The capital of" in text and "@mail.example.com" not in text and "<EMAIL>" in text
    assert "idiot" not in text.split()
    assert (
        tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
        == "<|user|>hi<|end|><|assistant|>"
    )


def _run_workers(tmp_path: Path, workers: int, timeout: float) -> Path:
    """The stage over `data/*.jsonl` as `workers` concurrent processes (all must succeed); its output."""
    res = dataset_resource(
        {
            **SMALL,
            "workers": workers,
            "sources": [{"name": "parts", "uri": "data/*.jsonl", "license": "CC0-1.0", "urlField": "url"}],
        }
    )
    spec = write_stage_spec(
        tmp_path / f"spec{workers}.json", res, tmp_path / f"store{workers}", base_dir=tmp_path, workers=workers
    )
    procs = [start_stage(spec, tmp_path / f"work{workers}", index=i) for i in range(workers)]
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]
    return tmp_path / f"store{workers}" / "runs" / "ds"


def test_two_workers_give_the_same_dataset_as_one(tmp_path: Path) -> None:
    _split_corpus(TINY_CORPUS, tmp_path / "data", files=5, lines=1500)
    results = {}
    for workers in (1, 2):
        out = _run_workers(tmp_path, workers, timeout=120)
        card = json.loads((out / "card" / "card.json").read_text())
        _check_card_adds_up(card)
        assert len(card["workers"]) == workers
        index = json.loads((out / "shards" / "index.json").read_text())
        results[workers] = (card["totals"], card["dedup"]["near"]["removed"], [e["sha256"] for e in index["train"]])
        assert not (tmp_path / f"store{workers}" / "runs" / "ds" / "work" / "worker-1").exists() or workers == 2
    assert results[1] == results[2]
    assert results[1][1] > 0  # the near-dup copies were spread over several files and workers


def test_killed_run_resumes_without_redoing_finished_work(tmp_path: Path) -> None:
    _split_corpus(TINY_CORPUS, tmp_path / "data", files=4, lines=800)
    res = dataset_resource(
        {
            **SMALL,
            "workers": 2,
            "shardSequences": 100,
            "sources": [{"name": "parts", "uri": "data/*.jsonl", "license": "CC0-1.0"}],
        }
    )
    spec = write_stage_spec(tmp_path / "spec.json", res, tmp_path / "store", base_dir=tmp_path, workers=2)
    out = tmp_path / "store" / "runs" / "ds"
    store = LocalStore(out)
    worker0 = start_stage(spec, tmp_path / "work", index=0)  # finishes its slice, then waits for worker 1
    deadline = time.monotonic() + 60
    while read_manifest(store, "work/worker-0") is None:
        assert worker0.poll() is None and time.monotonic() < deadline, "worker 0 never committed its slice"
        time.sleep(0.1)
    worker0.send_signal(signal.SIGKILL)
    worker0.wait(timeout=30)
    assert not (out / "result.json").exists() and read_manifest(store, "shards") is None
    slice_created = read_manifest(store, "work/worker-0").created  # type: ignore[union-attr]

    # The workers run together again (as an Indexed Job's pods do): each takes part in the dedup.
    procs = [start_stage(spec, tmp_path / "work", index=i) for i in (1, 0)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    assert read_manifest(store, "work/worker-0").created == slice_created  # type: ignore[union-attr]
    assert (out / "result.json").exists() and is_complete(store, "shards")

    # Simulate a kill during shard writing: manifest and result gone, one shard unfinished.
    shards = sorted((out / "shards").glob("train-*.bin"))
    assert len(shards) >= 3
    victim = shards[1]
    digest = json.loads((out / "shards" / "index.json").read_text())["train"][1]["sha256"]
    for p in (
        out / "result.json",
        out / "shards" / "MANIFEST.json",
        victim,
        out / "work" / "shards-done" / f"{victim.name}.json",
    ):
        p.unlink()
    mtimes = {p.name: p.stat().st_mtime_ns for p in shards if p != victim}
    again = run_stage(spec, tmp_path / "work", index=0)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in shards if p != victim} == mtimes
    assert json.loads((out / "shards" / "index.json").read_text())["train"][1]["sha256"] == digest
    Shards(out / "shards").verify()


def test_three_workers_partition_the_dedup_and_give_byte_identical_output(tmp_path: Path) -> None:
    """1 worker and 3 (each with its share of hashes, buckets and signature columns): the same card
    (but for the per-worker table and the `workers` setting), tokenizer and shards, byte for byte."""
    _split_corpus(TINY_CORPUS, tmp_path / "data", files=7, lines=1500)
    outputs = {}
    for workers in (1, 3):
        out = _run_workers(tmp_path, workers, timeout=180)
        card = json.loads((out / "card" / "card.json").read_text())
        assert len(card.pop("workers")) == workers
        assert card["settings"].pop("workers") == workers  # the spec's own field; everything else must agree
        files = {
            f"{d}/{p.name}": p.read_bytes()
            for d in ("shards", "tokenizer")
            for p in sorted((out / d).iterdir())
            if p.name != "MANIFEST.json"
        }
        assert not (out / "work" / "dedup").exists() or not any((out / "work" / "dedup").iterdir())
        outputs[workers] = (card, files)
    assert outputs[1][0] == outputs[3][0]
    assert outputs[1][1].keys() == outputs[3][1].keys() and outputs[1][1] == outputs[3][1]
    near = outputs[1][0]["dedup"]["near"]
    assert near["removed"] > 0 and near["candidatePairs"] > 0


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"sources": [{"name": "ghost", "uri": "nowhere/*.jsonl", "license": "CC0-1.0"}]}, "source ghost"),
        ({"tokenizer": {"vocabSize": 262}}, "vocabSize"),
        ({"sources": [{"name": "broken", "uri": "bad.parquet", "license": "CC0-1.0"}]}, "bad.parquet"),
        ({"sources": [{"name": "closed", "uri": "x.jsonl", "license": "Proprietary"}]}, "Proprietary"),
    ],
)
def test_bad_input_fails_cleanly(tmp_path: Path, change: dict[str, Any], needle: str) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really parquet PAR1")
    base = {**SMALL, "sources": [{"name": "ok", "uri": "x.jsonl", "license": "CC0-1.0"}]}
    spec = write_stage_spec(
        tmp_path / "spec.json", dataset_resource({**base, **change}), tmp_path / "store", base_dir=tmp_path
    )
    proc = run_stage(spec, tmp_path / "work")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lmforge: error:") and needle in last
    assert not (tmp_path / "store" / "runs" / "ds" / "result.json").exists()


def test_s3_store_and_sources_with_decontamination(tmp_path: Path, s3_server: Any) -> None:
    bucket = s3_server.create_bucket()
    client = s3_server.client()
    rows = TINY_CORPUS.read_text().splitlines()[:600]
    client.put_object(Bucket=bucket, Key="raw/a.jsonl", Body="\n".join(rows[:300]).encode())
    client.put_object(Bucket=bucket, Key="raw/b.jsonl", Body="\n".join(rows[300:]).encode())
    client.put_object(Bucket=bucket, Key="lists/optout.txt", Body=b"# creators\noptout.example.org\n")
    protected = "so Juno stayed inside and read a book"
    (tmp_path / "qa.jsonl").write_text(
        json.dumps({"prompt": f"The weather was foggy, {protected}.", "answer": "yes"}) + "\n"
    )
    suite = {"model": {"name": "m"}, "tasks": [{"name": "qa", "type": "generation", "dataUri": "qa.jsonl"}]}
    res = dataset_resource(
        {
            **SMALL,
            "optOut": {"files": [f"s3://{bucket}/lists/optout.txt"]},
            "dedup": {"decontaminate": {"evalSuiteRefs": [{"name": "suite"}], "ngram": 8}},
            "sources": [{"name": "s3", "uri": f"s3://{bucket}/raw/*.jsonl", "license": "CC-BY-4.0", "urlField": "url"}],
        }
    )
    inputs = {"EvalSuite/suite": {"kind": "EvalSuite", "name": "suite", "spec": suite}}
    spec = write_stage_spec(tmp_path / "spec.json", res, f"s3://{bucket}/store", base_dir=tmp_path, inputs=inputs)
    proc = run_stage(spec, tmp_path / "work", extra=s3_server.env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads(client.get_object(Bucket=bucket, Key="store/runs/ds/card/card.json")["Body"].read())
    _check_card_adds_up(card)
    dropped = card["sources"][0]["dropped"]
    assert dropped["opt_out"]["documents"] > 0 and dropped["decontamination"]["documents"] > 0
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="store/runs/ds/shards/")["Contents"]}
    assert "store/runs/ds/shards/MANIFEST.json" in keys and "store/runs/ds/shards/index.json" in keys


def test_worker_zero_times_out_clearly_when_a_worker_never_commits(tmp_path: Path) -> None:
    _split_corpus(TINY_CORPUS, tmp_path / "data", files=2, lines=100)
    res = dataset_resource(
        {**SMALL, "workers": 2, "sources": [{"name": "parts", "uri": "data/*.jsonl", "license": "CC0-1.0"}]}
    )
    spec = write_stage_spec(tmp_path / "spec.json", res, tmp_path / "store", base_dir=tmp_path, workers=2)
    proc = run_stage(spec, tmp_path / "work", index=0, extra={"LMFORGE_DATASET_WAIT_S": "1"})
    assert proc.returncode == 1  # retryable: the other worker may still come
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lmforge: error: timed out") and "worker-1" in last
    assert read_manifest(LocalStore(tmp_path / "store" / "runs" / "ds"), "work/worker-0") is not None
