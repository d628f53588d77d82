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
    state = {"step": 7, "optim": optim.state_dict(), "value_head": model.state_dict(), "order": [3, 1, 2],
             "rng": random.getstate(), "torch_rng": torch.get_rng_state(), "numpy": np.random.get_state()}
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
    loop = SimpleNamespace(spec=SimpleNamespace(checkpoint=SimpleNamespace(resume=True)),
                           load=lambda state: pytest.fail("a crafted state reached the loop"))
    checkpoints = SimpleNamespace(restore=lambda out_dir: (tmp_path, 3))
    with pytest.raises(UnsafeCheckpoint):
        ppo.train(SimpleNamespace(), loop, checkpoints, tmp_path / "out")  # type: ignore[arg-type]
    assert not marker.exists()
