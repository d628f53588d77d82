"""Files read back from the store load weights-only: a `.pt` whose pickle would run code is refused
(and the code does not run), while LMForge's own checkpoint contents still round-trip."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lmforge.trainer.safe_load import UnsafeCheckpoint, load

pytestmark = pytest.mark.ml


class Payload:
    """Unpickling this creates `marker`: what a hostile checkpoint would do with pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def write_payload(path: Path, marker: Path) -> None:
    import torch

    torch.save({"step": 3, "evil": Payload(marker)}, path)


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    write_payload(tmp_path / "state.pt", marker)
    with pytest.raises(UnsafeCheckpoint, match=r"refused to load .*state.pt: it holds more than tensors"):
        load(tmp_path / "state.pt")
    assert not marker.exists()


def test_checkpoint_contents_round_trip(tmp_path: Path) -> None:
    import numpy as np
    import torch

    model = torch.nn.Linear(4, 2)
    optim = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    optim.step()
    state = {
        "step": 7,
        "optim": optim.state_dict(),
        "value_head": model.state_dict(),
        "order": [3, 1, 2],
        "rng": random.getstate(),
        "torch_rng": torch.get_rng_state(),
        "numpy": np.random.get_state(),
    }
    torch.save(state, tmp_path / "state.pt")
    back = load(tmp_path / "state.pt")
    assert back["rng"] == state["rng"] and back["order"] == [3, 1, 2]
    assert torch.equal(back["torch_rng"], state["torch_rng"])
    assert (back["numpy"][1] == state["numpy"][1]).all()
    optim.load_state_dict(back["optim"])


def test_ppo_resume_refuses_a_crafted_state(tmp_path: Path) -> None:
    from lmforge.trainer.align import ppo

    marker = tmp_path / "pwned"
    write_payload(tmp_path / "state.pt", marker)
    loop = SimpleNamespace(
        spec=SimpleNamespace(checkpoint=SimpleNamespace(resume=True)),
        load=lambda state: pytest.fail("a crafted state reached the loop"),
    )
    checkpoints = SimpleNamespace(restore=lambda out_dir: (tmp_path, 3))
    with pytest.raises(UnsafeCheckpoint):
        ppo.train(SimpleNamespace(), loop, checkpoints, tmp_path / "out")  # type: ignore[arg-type]
    assert not marker.exists()


class _GetattrPickler:
    """A pickle module whose Pickler writes Enum members (and one chosen object) as
    `getattr(owner, name)`, the way Python 3.11.2 (the images' Debian Python) pickles Enum members."""

    def __init__(self, extra: tuple[Any, str] | None = None) -> None:
        import enum
        import pickle

        outer = self

        class Pickler(pickle.Pickler):
            def reducer_override(self, obj: Any) -> Any:
                if isinstance(obj, enum.Enum):
                    return getattr, (type(obj), obj.name)
                if outer.extra is not None and obj is outer.marker:
                    return getattr, outer.extra
                return NotImplemented

        self.Pickler, self.extra, self.marker = Pickler, extra, object()
        self.__name__ = "pickle"

    def __getattr__(self, name: str) -> Any:
        import pickle

        return getattr(pickle, name)


def test_enum_members_pickled_by_name_load_but_getattr_does_nothing_else(tmp_path: Path) -> None:
    """A ZeRO checkpoint written under Python 3.11.2 holds `getattr(ZeroStageEnum, name)`: it
    loads. `getattr` on anything but an allowed Enum class's member is refused."""
    import numpy as np
    import torch
    from deepspeed.runtime.zero.config import ZeroStageEnum

    torch.save(
        {"zero_stage": ZeroStageEnum.optimizer_states, "t": torch.ones(2)},
        tmp_path / "ok.pt",
        pickle_module=_GetattrPickler(),
        _use_new_zipfile_serialization=True,
    )
    back = load(tmp_path / "ok.pt")
    assert back["zero_stage"] is ZeroStageEnum.optimizer_states and torch.equal(back["t"], torch.ones(2))

    hostile = _GetattrPickler(extra=(np.ndarray, "__subclasses__"))
    torch.save({"evil": hostile.marker}, tmp_path / "evil.pt", pickle_module=hostile)
    with pytest.raises(UnsafeCheckpoint, match="refused to load"):
        load(tmp_path / "evil.pt")
