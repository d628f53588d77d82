"""What the PretrainJob trains on: the Dataset's shards and tokenizer, the optional replay Dataset and
the optional starting model — fetched, verified, and checked against each other before any compute."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.api.contract import ArtifactName, InputArtifacts
from lmforge.api.pretrain import PretrainJobSpec
from lmforge.store import StoreError
from lmforge.trainer.artifacts import fetch
from lmforge.trainer.context import StageContext
from lmforge.trainer.errors import InvalidInput
from lmforge.trainer.pretrain.dist import World, barrier
from lmforge.trainer.shards import ShardIndex, Shards


@dataclass
class DatasetInput:
    name: str
    info: InputArtifacts
    shards_uri: str
    tokenizer_uri: str
    shards: Shards
    tokenizer_dir: Path
    card_sha256: str | None

    @property
    def index(self) -> ShardIndex:
        return self.shards.index


@dataclass
class InitModel:
    label: str
    """`Kind/name` or the URI, for the lineage."""
    path: Path
    lineage: list[str]


def _fetch(uri: str, what: str, *, require_manifest: bool = True) -> Path:
    try:
        return fetch(uri, require_manifest=require_manifest)
    except StoreError as exc:
        raise InvalidInput(f"{what}: {exc}") from None


def _card_sha256(info: InputArtifacts) -> str | None:
    """SHA-256 of the Dataset's card (card.json preferred: it is what other tools parse)."""
    uri = info.artifacts.get(ArtifactName.CARD.value)
    if uri is None:
        return None
    root = _fetch(uri, "dataset card")
    for name in ("card.json", "card.md"):
        if (root / name).is_file():
            return hashlib.sha256((root / name).read_bytes()).hexdigest()
    return None


def load_dataset(ctx: StageContext, name: str, world: World) -> DatasetInput:
    """Fetch a Dataset's shards and tokenizer (node rank 0 first, so processes never race on the
    download cache) and check the tokenizer matches the shards' vocabulary."""
    info = ctx.input("Dataset", name)
    missing = [a for a in (ArtifactName.SHARDS.value, ArtifactName.TOKENIZER.value) if a not in info.artifacts]
    if missing:
        raise InvalidInput(f"Dataset/{name} has no {', '.join(missing)} artifact (is it Ready?)")
    shards_uri, tok_uri = info.artifacts["shards"], info.artifacts["tokenizer"]
    if world.is_node_main:
        _fetch(shards_uri, f"Dataset/{name} shards")
        _fetch(tok_uri, f"Dataset/{name} tokenizer")
    barrier(world)
    shards = _fetch(shards_uri, f"Dataset/{name} shards")
    tok_dir = _fetch(tok_uri, f"Dataset/{name} tokenizer")
    opened = Shards(shards)
    index = opened.index
    vocab = tokenizer_vocab_size(tok_dir)
    if vocab != index.vocab_size:
        raise InvalidInput(
            f"Dataset/{name}: its tokenizer has {vocab} tokens but index.json says vocab_size "
            f"{index.vocab_size}; the shards were not made with this tokenizer"
        )
    top = max(opened.train.max_token_id(), opened.validation.max_token_id())
    if top >= vocab:
        raise InvalidInput(f"Dataset/{name}: shards contain token id {top}, outside the tokenizer's {vocab} tokens")
    return DatasetInput(name, info, shards_uri, tok_uri, opened, tok_dir, _card_sha256(info) if world.is_main else None)


def tokenizer_vocab_size(tok_dir: Path) -> int:
    """Tokens of a Hugging Face tokenizer including added special tokens (= the model's vocab)."""
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tok_dir))


def _vocab(tok_dir: Path) -> dict[str, int] | None:
    path = tok_dir / "tokenizer.json"
    if not path.is_file():
        return None
    from transformers import AutoTokenizer

    vocab: dict[str, int] = AutoTokenizer.from_pretrained(tok_dir).get_vocab()
    return vocab


def load_init(ctx: StageContext, spec: PretrainJobSpec, world: World) -> InitModel | None:
    """The model `initFrom` names, fetched (continual pretraining); None when training from scratch."""
    ref = spec.init_from
    if ref is None:
        return None
    if ref.uri is not None:
        uri, label, lineage = ctx.resolve(ref.uri), ref.uri, []
    else:
        assert ref.kind is not None and ref.name is not None
        info = ctx.input(ref.kind.value, ref.name)
        if ArtifactName.MODEL.value not in info.artifacts:
            raise InvalidInput(f"initFrom {ref.kind.value}/{ref.name} has no model artifact (is it Ready?)")
        uri, label, lineage = info.artifacts["model"], f"{ref.kind.value}/{ref.name}", list(info.lineage)
    if world.is_node_main:
        _fetch(uri, f"initFrom {label}", require_manifest=False)
    barrier(world)
    path = _fetch(uri, f"initFrom {label}", require_manifest=False)
    if not (path / "config.json").is_file():
        raise InvalidInput(f"initFrom {label}: {uri} is not a Hugging Face model directory (no config.json)")
    return InitModel(label, path, lineage)


def check_init_tokenizer(init: InitModel, dataset: DatasetInput) -> None:
    """Continual pretraining must keep the model's token ids: same vocabulary, or a clear error."""
    config: dict[str, Any] = json.loads((init.path / "config.json").read_text())
    vocab = tokenizer_vocab_size(dataset.tokenizer_dir)
    if int(config.get("vocab_size", 0)) < vocab:
        raise InvalidInput(
            f"initFrom {init.label}: the model has vocab_size {config.get('vocab_size')} but "
            f"Dataset/{dataset.name}'s tokenizer has {vocab} tokens"
        )
    theirs = _vocab(init.path)
    if theirs is not None and theirs != _vocab(dataset.tokenizer_dir):
        raise InvalidInput(
            f"initFrom {init.label}: its tokenizer differs from Dataset/{dataset.name}'s; "
            "continual pretraining needs the same tokenizer (re-tokenize the Dataset with it)"
        )
