"""The `align` stage: `python -m lmforge.trainer align --spec FILE` runs one AlignmentJob.

Order of work: check what can be checked before loading anything heavy (precision, QLoRA runtime,
the data rows), fetch the base, tokenize with the chat template, train with the method's trl trainer
(or our PPO loop) with checkpoints mirrored to the store, then rank 0 publishes (see `export` for what
is published when) and the result carries the metrics.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from lmforge.api.alignment import AdapterOutput, AdapterType, AlignmentJob, AlignmentMethod
from lmforge.trainer.align import hf
from lmforge.trainer.align.base import (
    BaseModel,
    check_precision,
    frozen_in_bf16,
    load_model,
    load_tokenizer,
    on_gpu,
    resolve_base,
)
from lmforge.trainer.align.data import Example, load_rows, split
from lmforge.trainer.align.export import export
from lmforge.trainer.align.lora import reattach, require_qlora_runtime, wrap
from lmforge.trainer.context import StageContext, StageOutcome
from lmforge.trainer.errors import InvalidInput


class Trained(NamedTuple):
    """What a method's training gives `run`. A tuple, so `run` unpacks it and holds the model in one
    name only (it deletes it before loading the stored-precision base for a merge)."""

    model: Any
    metrics: dict[str, float]
    resumed_from_step: int | None
    """The checkpoint step training resumed from; None when it started fresh."""


def _sft(
    ctx: StageContext, job: AlignmentJob, base: BaseModel, tok: Any, train: list[Example], val: list[Example]
) -> Trained:
    from lmforge.trainer.align.sft import build_trainer, encode

    spec = job.spec
    enc = [
        encode(x, tok, tok.chat_template, spec.training.max_length, spec.sft.assistant_only_loss) for x in (train, val)
    ]
    if not enc[0].rows:
        raise InvalidInput(
            f"spec.training.maxLength: every training row lost its answer to truncation at "
            f"{spec.training.max_length} tokens ({enc[0].dropped} rows)"
        )
    model = wrap(load_model(base.path, spec), spec)
    out = ctx.work_dir / "trainer"
    trainer = build_trainer(spec, model, tok, enc[0], enc[1], hf.training_args(spec, out, bool(enc[1].rows)))
    cb = hf.train(trainer, ctx, spec, out)
    metrics = dict(cb.metrics)
    if "loss" in cb.first:
        metrics["first_loss"] = cb.first["loss"]
    if enc[1].rows:
        metrics["eval_loss"] = float(trainer.evaluate()["eval_loss"])
    metrics["dropped_truncated"] = float(enc[0].dropped + enc[1].dropped)
    metrics["truncated"] = float(enc[0].truncated + enc[1].truncated)
    return Trained(trainer.model, metrics, cb.resumed_from_step)


def _preference(
    ctx: StageContext, job: AlignmentJob, base: BaseModel, tok: Any, train: list[Example], val: list[Example]
) -> Trained:
    from lmforge.trainer.align import preference as pref

    spec = job.spec
    reward = spec.method is AlignmentMethod.REWARD
    kto = spec.method is AlignmentMethod.KTO
    encoder = pref.encode_reward if reward else pref.encode_kto if kto else pref.encode_dpo
    pairs = [encoder(x, tok, tok.chat_template, spec.training.max_length) for x in (train, val)]
    if not pairs[0].rows:
        raise InvalidInput(f"spec.training.maxLength: every prompt fills {spec.training.max_length} tokens")
    model = load_model(base.path, spec, reward_head=reward)
    model = wrap(model, spec, "SEQ_CLS" if reward else "CAUSAL_LM")
    out = ctx.work_dir / "trainer"
    args = hf.training_args(spec, out, bool(pairs[1].rows))
    build = pref.build_reward_trainer if reward else pref.build_kto_trainer if kto else pref.build_dpo_trainer
    trainer = build(spec, model, tok, pairs[0], pairs[1], args)
    cb = hf.train(trainer, ctx, spec, out)
    metrics = dict(cb.metrics)
    for name in ("loss", "reward_margin", "pairwise_accuracy", "kl"):
        if name in cb.first:
            metrics[f"first_{name}"] = cb.first[name]
    if pairs[1].rows:
        final = trainer.evaluate()
        for key, value in final.items():
            if key in hf.METRIC_NAMES:
                metrics[hf.METRIC_NAMES[key]] = float(value)
        if reward and "eval_accuracy" in final:
            metrics["pairwise_accuracy"] = float(final["eval_accuracy"])
    metrics["dropped_truncated"] = float(pairs[0].dropped + pairs[1].dropped)
    return Trained(trainer.model, metrics, cb.resumed_from_step)


def _load_reward_model(ctx: StageContext, spec: Any, name: str, field: str) -> tuple[Any, Any]:
    """The `model` of the AlignmentJob `name` (method reward) as a one-label classifier, with its tokenizer."""
    from transformers import AutoModelForSequenceClassification

    from lmforge.trainer.artifacts import fetch

    found = ctx.input("AlignmentJob", name)
    if "model" not in found.artifacts:
        raise InvalidInput(f"{field}: AlignmentJob/{found.name} published no `model`")
    rpath = fetch(found.artifacts["model"])
    return AutoModelForSequenceClassification.from_pretrained(rpath, num_labels=1), load_tokenizer(rpath, spec)


def _group_rl(
    ctx: StageContext, job: AlignmentJob, base: BaseModel, tok: Any, train: list[Example], val: list[Example]
) -> Trained:
    from lmforge.trainer.align import group_rl

    spec = job.spec
    _, opts = group_rl.options(spec)
    funcs, reward_toks, weights = group_rl.reward_functions(
        spec, opts, lambda ref, field: _load_reward_model(ctx, spec, ref.name, field)
    )
    model = wrap(load_model(base.path, spec), spec)
    first = group_rl.heldout_reward(model, tok, val, funcs, weights, opts.max_completion_length)
    out = ctx.work_dir / "trainer"
    trainer = group_rl.build_trainer(
        spec, model, tok, train, hf.training_args(spec, out, False), funcs, reward_toks, weights
    )
    cb = hf.train(trainer, ctx, spec, out)
    metrics = dict(cb.metrics)
    if "mean_reward" in cb.first:
        metrics["first_mean_reward"] = cb.first["mean_reward"]
    final = group_rl.heldout_reward(trainer.model, tok, val, funcs, weights, opts.max_completion_length)
    if first is not None and final is not None:
        metrics["first_eval_mean_reward"], metrics["eval_mean_reward"] = first, final
    return Trained(trainer.model, metrics, cb.resumed_from_step)


def _ppo(
    ctx: StageContext, job: AlignmentJob, base: BaseModel, tok: Any, train: list[Example], val: list[Example]
) -> Trained:
    from lmforge.trainer.align import ppo
    from lmforge.trainer.align.checkpoints import CheckpointStore

    spec = job.spec
    assert spec.ppo is not None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InvalidInput("method ppo runs in one process (one GPU or the CPU): set topology to 1 node × ≤1 GPU")
    device = "cuda" if on_gpu(spec) else "cpu"
    if spec.ppo.reward_function is not None:
        scorer = ppo.function_scorer(ppo.reward_function(spec.ppo.reward_function))
    else:
        assert spec.ppo.reward_model_ref is not None
        rm, rtok = _load_reward_model(ctx, spec, spec.ppo.reward_model_ref.name, "spec.ppo.rewardModelRef")
        scorer = ppo.model_scorer(rm.to(device), rtok, rtok.chat_template)
    policy = wrap(load_model(base.path, spec, autocast=False), spec)  # our loop has no autocast
    loop = ppo.PpoLoop(spec, policy, tok, tok.chat_template, train + val, scorer, device)
    checkpoints = CheckpointStore(ctx.output, spec.checkpoint.keep_last, publish=hf.is_main())
    metrics, resumed_from = ppo.train(ctx, loop, checkpoints, ctx.work_dir / "ppo")
    return Trained(policy, metrics, resumed_from)


METHODS = {
    AlignmentMethod.SFT: _sft,
    AlignmentMethod.REWARD: _preference,
    AlignmentMethod.DPO: _preference,
    AlignmentMethod.IPO: _preference,
    AlignmentMethod.PPO: _ppo,
    AlignmentMethod.KTO: _preference,
    AlignmentMethod.GRPO: _group_rl,
    AlignmentMethod.RLOO: _group_rl,
}


def _merges_reloaded_base(job: AlignmentJob) -> bool:
    """A merged output of a LoRA trained on a bf16 copy of the base (all methods but our PPO loop)."""
    spec = job.spec
    return (
        frozen_in_bf16(spec) and spec.method is not AlignmentMethod.PPO and spec.adapter.output is AdapterOutput.MERGED
    )


def run(ctx: StageContext) -> StageOutcome:
    """Train and publish one AlignmentJob; returns the artifacts and metrics (rank 0 publishes and reports;
    other ranks return no artifacts and leave the result to rank 0)."""
    job = ctx.resource
    if not isinstance(job, AlignmentJob):
        raise InvalidInput(f"the align stage runs AlignmentJobs, not {type(job).__name__}")
    spec = job.spec
    check_precision(spec)
    if spec.adapter.type is AdapterType.QLORA:
        require_qlora_runtime()
    data_uri = ctx.resolve(spec.data.uri)
    rows = load_rows(data_uri, spec.method, spec.data.format, spec.data.skip_bad_rows)
    for reason in rows.reasons:
        print(f"skipped bad row: {reason}", flush=True)
    train, val = split(rows.examples, spec.data.validation_fraction, spec.training.seed)
    ref = spec.model_ref
    base = resolve_base(ctx, ref.kind.value if ref.kind else None, ref.name, ref.uri)
    tok = load_tokenizer(base.path, spec)
    ctx.reporter.progress(
        0,
        None,
        message=f"{spec.method.value}: {len(train)} training rows, {len(val)} held out, {rows.bad} bad rows skipped",
        force=True,
    )
    model, metrics, resumed_from = METHODS[spec.method](ctx, job, base, tok, train, val)
    metrics.update({"rows": float(len(rows.examples)), "bad_rows": float(rows.bad)})
    if resumed_from is not None:
        metrics["resumed_from_step"] = float(resumed_from)
    if not hf.is_main():
        return StageOutcome({}, metrics, writes_result=False)  # rank 0 reports
    if _merges_reloaded_base(job):
        adapter_dir = ctx.work_dir / "trained-adapter"
        model.save_pretrained(adapter_dir)
        del model  # the bf16 training base goes before the stored-precision one is loaded
        reward = spec.method is AlignmentMethod.REWARD
        model = reattach(lambda: load_model(base.path, spec, reward_head=reward, stored_precision=True), adapter_dir)
    return StageOutcome(export(ctx, job, model, tok, base, data_uri, metrics), metrics)
