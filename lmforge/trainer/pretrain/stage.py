"""`python -m lmforge.trainer pretrain`: train a Llama-style model on a Dataset's shards with
DeepSpeed, checkpointing to the store and resuming automatically, then export it in Hugging Face
format with a model card. Runs as one process or under torchrun; only rank 0 reports and publishes."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from typing import Any

from lmforge.api.contract import ArtifactName
from lmforge.api.pretrain import PretrainJob, PretrainJobSpec
from lmforge.api.training import activation_bytes, checkpoint_bytes, train_state_bytes
from lmforge.trainer.artifacts import publish
from lmforge.trainer.context import StageContext, StageOutcome
from lmforge.trainer.errors import InvalidInput
from lmforge.trainer.models import architecture_of, build_model, llama_config, load_model, parameter_count
from lmforge.trainer.precision import trains_on_gpu
from lmforge.trainer.pretrain import export
from lmforge.trainer.pretrain.autocompile import AutoCompile, CostKey, device_name
from lmforge.trainer.pretrain.checkpoint import Checkpoints, host_copy_fits
from lmforge.trainer.pretrain.config import RunShape, deepspeed_config, run_shape
from lmforge.trainer.pretrain.data import BatchStream, validation_batches
from lmforge.trainer.pretrain.dist import World, barrier, process_group
from lmforge.trainer.pretrain.inputs import (
    DatasetInput,
    InitModel,
    check_init_tokenizer,
    load_dataset,
    load_init,
)
from lmforge.trainer.pretrain.loop import LoopSettings, LoopState, TrainLoop
from lmforge.trainer.pretrain.metrics import Throughput, device_peak_flops
from lmforge.trainer.pretrain.preempt import StopRequest, stop_on_signals
from lmforge.trainer.pretrain.schedule import lr_multiplier
from lmforge.trainer.pretrain.speed import adamw, choose_attention


def _set_threads(spec: PretrainJobSpec, world: World) -> None:
    """Intra-op threads: the spec's, else this machine's cores shared by the local processes."""
    import torch

    if torch.cuda.is_available():
        return
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(spec.compute.threads or max(1, cores // world.local_size))


def _available_memory() -> tuple[float, str]:
    import torch

    if torch.cuda.is_available():
        return float(torch.cuda.get_device_properties(0).total_memory), "GPU memory"
    return _host_memory_available(), "available host memory"


def _check_fits(spec: PretrainJobSpec, params: int, shape: RunShape, hidden: int, layers: int, world: World) -> None:
    """Refuse a model whose weights, gradients, optimizer state and activations cannot fit."""
    need = train_state_bytes(
        params, zero_stage=spec.deepspeed.zero_stage, world=world.size, precision=spec.training.precision
    )
    need += activation_bytes(
        layers=layers,
        hidden=hidden,
        seq_length=shape.seq_length,
        micro_batch=shape.micro_batch,
        checkpointing=spec.training.gradient_checkpointing,
    )
    have, what = _available_memory()
    processes = 1 if _uses_gpu(spec) else world.local_size
    if need * processes > 0.9 * have:
        raise InvalidInput(
            f"model.{params / 1e6:.1f}M parameters need ~{need / 2**30:.1f} GiB per process for weights, "
            f"gradients, optimizer state and activations (ZeRO stage {spec.deepspeed.zero_stage}, "
            f"{world.size} process(es)), but only {have / 2**30:.1f} GiB of {what} is there; raise "
            "deepspeed.zeroStage, add GPUs, enable gradientCheckpointing or lower microBatchSize"
        )


def _host_memory_available() -> float:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return float(info.get("MemAvailable", info.get("MemTotal", 0)))


def _asynchronous_checkpoints(spec: PretrainJobSpec, params: int, world: World) -> bool:
    """`checkpoint.async` where host memory holds one more copy of each local process's checkpoint
    (its weights and its part of the optimizer state); otherwise synchronous saves, with a warning."""
    if not spec.checkpoint.async_:
        return False
    need = checkpoint_bytes(
        params, zero_stage=spec.deepspeed.zero_stage, world=world.size, precision=spec.training.precision
    )
    have = _host_memory_available()
    if host_copy_fits(need, world.local_size, have):
        return True
    if world.is_main:
        print(
            f"lmforge: warning: checkpoint.async: a host copy of the checkpoint state needs "
            f"~{need * world.local_size / 2**30:.1f} GiB on this node but only {have / 2**30:.1f} GiB is "
            "available; saving checkpoints synchronously",
            file=sys.stderr,
            flush=True,
        )
    return False


def _uses_gpu(spec: PretrainJobSpec) -> bool:
    return trains_on_gpu(spec.topology.gpus_per_node)


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices, none on norms (1-D weights) — the usual LLM recipe."""
    decay: list[Any] = []
    no_decay: list[Any] = []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _build_model(spec: PretrainJobSpec, data: DatasetInput, init: InitModel | None) -> Any:
    if init is not None:
        check_init_tokenizer(init, data)
        return load_model(str(init.path))
    idx = data.index
    config = llama_config(
        spec.model,
        vocab_size=idx.vocab_size,
        context_length=idx.seq_length,
        bos_token_id=idx.bos_id,
        eos_token_id=idx.eos_id,
        pad_token_id=idx.pad_id,
    )
    return build_model(config, spec.training.seed)


def _quiet_other_ranks(ctx: StageContext, world: World) -> None:
    """Only rank 0 reports and writes progress/result (torchrun ranks share the spec's worker index;
    the others' outcome says `writes_result=False`)."""
    if not world.is_main:
        ctx.reporter.output = None
        ctx.reporter.stream = io.StringIO()


def run(ctx: StageContext) -> StageOutcome:
    assert isinstance(ctx.resource, PretrainJob)
    spec = ctx.resource.spec
    with process_group(_uses_gpu(spec)) as world:
        _quiet_other_ranks(ctx, world)
        outcome = _train(ctx, spec, world)
        # Other ranks wait for rank 0's export and publish: a rank that tore down its gloo group while
        # rank 0 still used it aborted now and then ("terminate called without an active exception").
        barrier(world)
        return outcome


def _train(ctx: StageContext, spec: PretrainJobSpec, world: World) -> StageOutcome:
    import deepspeed
    import torch

    _set_threads(spec, world)
    data = load_dataset(ctx, spec.dataset_ref.name, world)
    replay = load_dataset(ctx, spec.replay.dataset_ref.name, world) if spec.replay else None
    if replay is not None and replay.index.vocab_size != data.index.vocab_size:
        raise InvalidInput(f"replay.datasetRef {replay.name} uses a different vocabulary than {data.name}")
    init = load_init(ctx, spec, world)
    seq = data.index.seq_length
    shape = run_shape(spec, world.size, seq)
    model = _build_model(spec, data, init)
    if model.config.max_position_embeddings < seq:
        raise InvalidInput(
            f"model.maxPositionEmbeddings ({model.config.max_position_embeddings}) is shorter "
            f"than Dataset/{data.name}'s seqLength ({seq})"
        )
    arch = architecture_of(model.config)
    params = parameter_count(model)
    _check_fits(spec, params, shape, arch.hidden_size, arch.num_layers, world)
    attention = choose_attention(model, seq, _uses_gpu(spec))
    if spec.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ds_config = deepspeed_config(spec, shape)
    if world.is_main:
        print("DeepSpeed config: " + json.dumps(ds_config, sort_keys=True), flush=True)
    optimizer = adamw(
        _param_groups(model, spec.optimizer.weight_decay),
        spec.optimizer.lr,
        (spec.optimizer.beta1, spec.optimizer.beta2),
        spec.optimizer.eps,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(spec.optimizer, shape.total_steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    compile_plan = AutoCompile(
        spec.training.compile,
        engine.compile,
        _compile_key(spec, arch.wire(), data.index.vocab_size, shape, attention),
        world,
    )

    checkpoints = Checkpoints(
        ctx.output,
        ctx.work_dir / "checkpoints",
        world,
        spec.checkpoint.keep_last,
        asynchronous=_asynchronous_checkpoints(spec, params, world),
    )
    stream = BatchStream(
        data.shards.train,
        spec.training.seed,
        shape.micro_batch,
        world.rank,
        world.size,
        data.index.pad_id,
        replay.shards.train if replay else None,
        spec.replay.fraction if spec.replay else 0.0,
    )
    state = LoopState()
    resumed = checkpoints.resume(engine) if spec.checkpoint.resume else None
    if resumed is not None:
        state.step = int(resumed["step"])
        stream.restore(resumed["data"])
        skipped = resumed.get("skipped") or []
        note = f" ({', '.join(skipped)} damaged, skipped)" if skipped else ""
        ctx.reporter.progress(
            state.step, shape.total_steps, force=True, message=f"resumed from checkpoint step-{state.step}{note}"
        )
    peak, peak_source = device_peak_flops(spec.training.precision, spec.metrics.peak_flops_per_device)
    flops_per_token = arch.flops_per_token(data.index.vocab_size, seq)
    throughput = Throughput(shape.tokens_per_step, flops_per_token, peak * world.size)
    val = validation_batches(
        data.shards.validation, shape.micro_batch, spec.validation.batches, world.rank, world.size, data.index.pad_id
    )
    settings = LoopSettings(
        shape.total_steps,
        spec.validation.every_steps,
        spec.checkpoint.every_steps,
        spec.training.max_bad_steps,
        {"ds_config.json": json.dumps(ds_config, indent=2).encode()},
    )
    with stop_on_signals(StopRequest()) as stop:  # SIGTERM/SIGINT: checkpoint, then a retryable exit
        loop = TrainLoop(
            engine,
            stream,
            val,
            shape,
            settings,
            checkpoints,
            world,
            ctx.reporter if world.is_main else None,
            throughput,
            stop,
            compile_plan,
        )
        state = loop.run(state)
    resumed_from = int(resumed["step"]) if resumed else None
    state.metrics.update(parameters=float(params), steps=float(state.step), peak_flops=peak)
    print(f"peak FLOP/s per device {peak:.3g} ({peak_source})", file=sys.stderr, flush=True)

    sd = export.state_dict_for_export(engine, spec.deepspeed.zero_stage)
    if not world.is_main:
        return StageOutcome({}, writes_result=False, losses=state.losses, resumed_from=resumed_from)
    assert sd is not None
    artifacts, metrics = _publish(ctx, spec, data, replay, init, engine.module, sd, ds_config, state, shape, params)
    metrics.update(compile_plan.metrics())  # the result says whether (and why) the run compiled
    return StageOutcome(artifacts, metrics, losses=state.losses, resumed_from=resumed_from)


def _compile_key(spec: PretrainJobSpec, arch: dict[str, Any], vocab: int, shape: RunShape, attention: str) -> CostKey:
    """What the compile cost of this run depends on (see `autocompile.CostKey`)."""
    import torch

    t = spec.training
    return CostKey(
        {
            "model": arch,
            "vocab": vocab,
            "seq": shape.seq_length,
            "microBatch": shape.micro_batch,
            "precision": t.precision.value,
            "gradientCheckpointing": t.gradient_checkpointing,
            "attention": attention,
            "zeroStage": spec.deepspeed.zero_stage,
            "processes": shape.world,
            "threads": torch.get_num_threads(),
            "device": device_name(),
            "torch": torch.__version__,
        }
    )


def _publish(
    ctx: StageContext,
    spec: PretrainJobSpec,
    data: DatasetInput,
    replay: DatasetInput | None,
    init: InitModel | None,
    module: Any,
    state_dict: dict[str, Any],
    ds_config: dict[str, Any],
    state: LoopState,
    shape: RunShape,
    params: int,
) -> tuple[dict[str, str], dict[str, float]]:
    out = ctx.work_dir / "export"
    shutil.rmtree(out, ignore_errors=True)
    export.save_hf(module, state_dict, data.tokenizer_dir, out)
    lineage = export.Lineage(
        dataset=data.name,
        dataset_card_sha256=data.card_sha256,
        init_from=init.label if init else None,
        replay_dataset=replay.name if replay else None,
        upstream=[*(init.lineage if init else []), *data.info.lineage],
    )
    arch = architecture_of(module.config).wire()
    arch["vocabSize"] = data.index.vocab_size
    hyper = {
        "steps": state.step,
        "global batch (sequences)": shape.global_batch,
        "sequence length": shape.seq_length,
        "tokens": state.step * shape.tokens_per_step,
        "precision": spec.training.precision.value,
        "peak lr": spec.optimizer.lr,
        "min lr": spec.optimizer.min_lr,
        "warm-up steps": spec.optimizer.warmup_steps,
        "schedule": spec.optimizer.schedule.value,
        "weight decay": spec.optimizer.weight_decay,
        "ZeRO stage": spec.deepspeed.zero_stage,
        "processes": shape.world,
        "seed": spec.training.seed,
    }
    metrics = {k: v for k, v in state.metrics.items() if k in _CARD_METRICS}
    (out / "README.md").write_text(
        export.model_card(
            name=ctx.resource.metadata.name,
            lineage=lineage,
            architecture=arch,
            params=params,
            hyper=hyper,
            metrics=metrics,
        ),
        encoding="utf-8",
    )
    export.write_training_file(out, ds_config, spec.wire())
    metadata = {
        "lineage": lineage.entries(),
        "dataset": {
            "name": data.name,
            "shards": data.shards_uri,
            "tokenizer": data.tokenizer_uri,
            "cardSha256": data.card_sha256,
        },
        "architecture": arch,
        "parameters": params,
        "metrics": metrics,
        "precision": spec.training.precision.value,
    }
    if replay is not None:
        metadata["replay"] = {"name": replay.name, "shards": replay.shards_uri}
    if init is not None:
        metadata["initFrom"] = init.label
    uri = publish(ctx, ArtifactName.MODEL.value, out, "hf-model", metadata)
    return {ArtifactName.MODEL.value: uri}, metrics


_CARD_METRICS = {
    "loss",
    "val_loss",
    "val_perplexity",
    "tokens_per_second",
    "mfu",
    "tokens",
    "steps",
    "train_seconds",
    "parameters",
}
