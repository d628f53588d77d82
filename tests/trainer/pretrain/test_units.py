"""The pure parts of the pretraining stage: LR schedule, deterministic sampling, DeepSpeed config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lmforge.api.pretrain import Architecture, PretrainJobSpec
from lmforge.api.training import LRSchedule, Optimizer
from lmforge.trainer.errors import InvalidInput
from lmforge.trainer.pretrain.config import deepspeed_config, run_shape
from lmforge.trainer.pretrain.data import BatchStream, StreamSampler, validation_batches
from lmforge.trainer.pretrain.schedule import lr_multiplier
from lmforge.trainer.shards import ShardIndex, Shards, TokenRows

from .conftest import write_shards


@pytest.mark.parametrize(("schedule", "end"), [("cosine", 0.1), ("linear", 0.1), ("constant", 1.0)])
def test_schedule_warms_up_then_decays_to_the_floor(schedule: str, end: float) -> None:
    f = lr_multiplier(Optimizer(lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule=LRSchedule(schedule)), 110)
    warm = [f(s) for s in range(10)]
    assert warm == sorted(warm) and warm[0] < 0.2 and warm[-1] < 1.0
    assert f(10) == pytest.approx(1.0)
    assert f(110) == pytest.approx(end)
    decay = [f(s) for s in range(10, 111)]
    assert decay == sorted(decay, reverse=True)
    assert min(decay) >= end - 1e-9


def test_sampler_is_a_permutation_per_epoch_and_resumable() -> None:
    s = StreamSampler(10, seed=3)
    first = s.indices(0, 10)
    assert sorted(first.tolist()) == list(range(10))
    assert sorted(s.indices(10, 10).tolist()) == list(range(10))
    assert not np.array_equal(first, s.indices(10, 10))  # a fresh order each epoch
    assert np.array_equal(StreamSampler(10, seed=3).indices(0, 25), StreamSampler(10, 3).indices(0, 25))
    assert not np.array_equal(StreamSampler(10, seed=4).indices(0, 10), first)


def test_ranks_take_disjoint_slices_and_a_restored_stream_continues_exactly() -> None:
    rows = TokenRows([np.arange(40 * 4, dtype=np.uint16).reshape(40, 4)], 4)
    streams = [BatchStream(rows, seed=1, micro_batch=3, rank=r, world=2, pad_id=None) for r in range(2)]
    seen = [s.next()[0][:, 0] // 4 for s in streams]
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    for _ in range(4):
        for s in streams:
            s.next()
    resumed = BatchStream(rows, seed=1, micro_batch=3, rank=1, world=2, pad_id=None)
    resumed.restore(streams[1].state())
    assert np.array_equal(resumed.next()[0], streams[1].next()[0])


def test_labels_mask_padding_and_replay_mixes_in_the_earlier_dataset() -> None:
    main = TokenRows([np.full((20, 4), 5, dtype=np.uint16)], 4)
    old = TokenRows([np.full((20, 4), 9, dtype=np.uint16)], 4)
    x, y = BatchStream(main, 0, 10, 0, 1, pad_id=5, replay=old, replay_fraction=0.3).next()
    assert x.shape == (10, 4) and (x == 9).all(axis=1).sum() == 3
    assert (y[x == 5] == -100).all() and (y[x == 9] == 9).all()


def test_validation_batches_are_equal_in_number_on_every_rank() -> None:
    rows = TokenRows([np.arange(12, dtype=np.uint16).reshape(3, 4)], 4)
    counts = [len(validation_batches(rows, 2, 3, r, 2, None)) for r in range(2)]
    assert counts == [2, 2]


def test_shard_index_reads_the_dataset_format(tmp_path: Path, tiny_tokenizer: Path) -> None:
    shards = Shards(write_shards(tmp_path / "s", tiny_tokenizer, n_sentences=200, val_rows=4))
    assert shards.seq_length == 32 and len(shards.validation) == 4
    assert shards.train.max_token_id() < shards.index.vocab_size
    (tmp_path / "s" / "index.json").write_text('{"format": "other"}')
    with pytest.raises(InvalidInput, match="format"):
        ShardIndex.load(tmp_path / "s")


def _spec(**training: object) -> PretrainJobSpec:
    return PretrainJobSpec.model_validate(
        {
            "datasetRef": {"name": "d"},
            "training": {"microBatchSize": 4, "gradientAccumulationSteps": 2, **training},
            "deepspeed": {"zeroStage": 3, "extraConfig": {"zero_optimization": {"reduce_bucket_size": 1000}}},
        }
    )


def test_deepspeed_config_follows_the_spec_and_merges_extra_keys() -> None:
    spec = _spec(maxSteps=5, precision="fp32", gradientClipping=0.5)
    cfg = deepspeed_config(spec, run_shape(spec, world=2, seq_length=16))
    assert cfg["train_batch_size"] == 16 and cfg["gradient_accumulation_steps"] == 2
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["zero_optimization"]["reduce_bucket_size"] == 1000
    assert cfg["bf16"]["enabled"] is False and cfg["gradient_clipping"] == 0.5


def test_token_budget_becomes_whole_steps() -> None:
    assert run_shape(_spec(tokens=1000), world=2, seq_length=16).total_steps == 4  # 1000 / 256 rounded up


def test_parameter_count_matches_transformers() -> None:
    from lmforge.trainer.models import llama_config, parameter_count

    arch = Architecture(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, tie_embeddings=False)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(llama_config(arch, vocab_size=100, context_length=16))
    assert parameter_count(model) == arch.parameter_count(100)
