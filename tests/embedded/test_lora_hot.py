"""Many LoRA adapters on one real vLLM server (CPU build) under `lmforge run`'s loop: two adapters
answer differently under their own model names; a third added to the running release is loaded into
the same server process (no restart); one removed is unloaded (gone from `/v1/models`, its name
answers 404); one of a larger rank than the server accepts is refused with vLLM's reason.

The upstream stages are the test stage script publishing prepared directories (a tiny random Llama
as the PretrainJob's model and the release's compressed model, three peft adapters with random
weights as the AlignmentJobs' adapters) so that the time goes to serving; the serve stage is the real
one (`python -m lmforge.trainer serve`, vLLM as its child process).
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from support.tiny import make_model
from support.waiting import eventually

from lmforge.api.meta import Phase
from lmforge.api.validation import dependency_order, validate_paths
from lmforge.operator.embedded.report import compression
from lmforge.operator.embedded.runner import Outcome, Runner, RunOptions
from lmforge.operator.embedded.state import StateFile, state_dir_for
from lmforge.operator.local import LocalBackend
from lmforge.operator.local.backend import free_port
from lmforge.store import open_store

from .helpers import SCRIPT

pytestmark = [pytest.mark.ml, pytest.mark.slow]

READY_S = 300
KEY_ENV, KEY = "LORA_TEST_API_KEY", "s3cret-key"
"""The release's API key: `lmforge run` reads `apiKeySecret`'s key from its environment."""


def make_adapters(base: Path, out: Path, names: str, rank: int = 8) -> dict[str, Path]:
    """Peft LoRA adapters of `base` (rank 8 on q/v/o) with random A and B, so each changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dirs = {}
    for i, name in enumerate(names):
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base),
            LoraConfig(r=rank, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"),
        )
        gen = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for pname, param in model.named_parameters():
                if "lora_" in pname:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
        dirs[name] = out / name
        model.save_pretrained(dirs[name])
    return dirs


def wrapper(tmp: Path) -> str:
    """A "python" that runs the real serve stage and the test stage script for every other stage."""
    path = tmp / "python-serve-real"
    path.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" serve "*) exec {sys.executable} "$@";; esac\n'
        f'exec {sys.executable} {SCRIPT} "$@"\n'
    )
    path.chmod(0o755)
    return str(path)


def write(directory: Path, port: int, base: Path, adapters: dict[str, Path], served: list[str]) -> list[Any]:
    """The manifests: a PretrainJob publishing `base`, one AlignmentJob per adapter, and a release
    serving `served` of them (at most 3 at once)."""

    def doc(kind: str, name: str, spec: dict[str, Any], behaviour: str = "ok", **publish: Path) -> dict[str, Any]:
        notes = {"test/behaviour": behaviour, "test/publish": json.dumps({k: str(v) for k, v in publish.items()})}
        return {
            "apiVersion": "lmforge.io/v1alpha1",
            "kind": kind,
            "metadata": {"name": name, "annotations": notes},
            "spec": spec,
        }

    docs = [
        doc("Dataset", "d", {"sources": [{"name": "s", "uri": "x.txt", "license": "MIT"}]}),
        doc("PretrainJob", "p", {"datasetRef": {"name": "d"}, "training": {"maxSteps": 10}}, "publish", model=base),
    ]
    for name, path in adapters.items():
        spec = {
            "modelRef": {"kind": "PretrainJob", "name": "p"},
            "method": "sft",
            "data": {"uri": "x.jsonl"},
            "adapter": {"type": "lora", "output": "adapter"},
        }
        docs.append(doc("AlignmentJob", name, spec, "publish", adapter=path))
    serving = {
        "port": port,
        "servedModelName": "tiny",
        "dtype": "float32",
        "maxModelLen": 256,
        "maxLoras": 3,
        "maxLoraRank": 8,
        "loraAdapters": [{"name": n} for n in served],
        "extraArgs": ["--enforce-eager"],
        "apiKeySecret": {"name": "lora-key", "key": KEY_ENV},
    }
    release = {"modelRef": {"kind": "PretrainJob", "name": "p"}, "serving": serving}
    docs.append(doc("ModelRelease", "r", release, "publish", model=base))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pipeline.yaml").write_text(yaml.safe_dump_all(docs))
    found, problems = validate_paths([directory])
    assert not problems, problems
    by_id = {id(m.resource): m for m in found}
    return [by_id[id(r)] for r in dependency_order([m.resource for m in found])]


def call(url: str, path: str, body: dict[str, Any] | None = None, key: str | None = KEY) -> tuple[int, Any]:
    """(HTTP status, parsed answer or the error body) of one request to the server."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{url}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def complete(url: str, model: str) -> tuple[int, Any]:
    """Greedy completion: (HTTP status, (text, token logprobs) or the error body)."""
    body = {"model": model, "prompt": "the red cat", "max_tokens": 6, "temperature": 0, "logprobs": 1}
    code, out = call(url, "/completions", body)
    if code != 200:
        return code, out
    choice = out["choices"][0]
    return 200, (choice["text"], [round(x, 3) for x in choice["logprobs"]["token_logprobs"]])


def models(url: str) -> list[str]:
    code, out = call(url, "/models")
    assert code == 200, out
    return sorted(m["id"] for m in out["data"])


def listener(port: int) -> tuple[int, float]:
    """(pid, process start time) of the process listening on `port`: vLLM's API server."""
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid, psutil.Process(conn.pid).create_time()
    raise AssertionError(f"nothing listens on {port}")


def test_adapters_answer_under_their_names_and_are_hot_loaded_and_unloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    base = make_model(tmp_path / "base", hidden=64, layers=2, heads=2)
    dirs = make_adapters(base, tmp_path / "adapters", "abc")
    port = free_port()
    uri = open_store(str(tmp_path / "store")).uri
    state = StateFile(state_dir_for(uri)[0], uri)
    backend = LocalBackend(open_store(uri), state.dir, python=wrapper(tmp_path), backoff=0.05)
    two = {n: dirs[n] for n in "ab"}
    runner = Runner(write(tmp_path / "m", port, base, two, ["a", "b"]), uri, state, backend, RunOptions(poll=0.2))
    status = lambda: runner.state.resources["ModelRelease/r"].status  # noqa: E731
    try:
        assert runner.run() is Outcome.DONE, status()
        url = status().endpoint
        assert status().phase is Phase.SERVING and url == f"http://127.0.0.1:{port}/v1"
        eventually(lambda: status().adapters == ["a", "b"], tick=runner.step, timeout=30, what="adapters reported")
        assert models(url) == ["a", "b", "tiny"]
        answers = {m: complete(url, m) for m in ("tiny", "a", "b")}
        assert all(code == 200 for code, _ in answers.values()), answers
        assert len({json.dumps(a) for _, a in answers.values()}) == 3, answers  # each adapter answers its own way
        server = listener(port)
        rid = status().run_id

        # A third adapter added to the running release: loaded into the same server, no restart.
        t0 = time.monotonic()
        runner.reload(write(tmp_path / "m", port, base, dirs, ["a", "b", "c"]))
        eventually(lambda: status().adapters == ["a", "b", "c"], tick=runner.step, timeout=READY_S, interval=0.2)
        added_s = time.monotonic() - t0  # includes AlignmentJob/c's (stand-in) stage
        assert listener(port) == server and status().run_id == rid and status().endpoint == url
        code, c_answer = complete(url, "c")
        assert code == 200 and c_answer not in [a for _, a in answers.values()]
        assert complete(url, "a") == answers["a"]  # the others are unchanged
        ready = status().condition("Ready")
        assert ready is not None and "adapters a, b, c" in ready.message
        report = " ".join(t for section in compression(runner.state) for t in section.text)
        assert "LoRA adapters served (model names): a, b, c" in report

        # Without the release's API key nobody else changes the server's adapters.
        code, _ = call(url, "/load_lora_adapter", {"lora_name": "evil", "lora_path": str(dirs["b"])}, key=None)
        assert code == 401 and "evil" not in models(url)
        code, _ = call(url, "/unload_lora_adapter", {"lora_name": "a"}, key="wrong")
        assert code == 401 and "a" in models(url)

        # One removed: unloaded from the same server, its name is gone.
        t0 = time.monotonic()
        runner.reload(write(tmp_path / "m", port, base, dirs, ["a", "c"]))
        eventually(lambda: status().adapters == ["a", "c"], tick=runner.step, timeout=60, interval=0.2)
        print(f"adapter c served {added_s:.1f} s after the edit, b unloaded after {time.monotonic() - t0:.1f} s")
        assert models(url) == ["a", "c", "tiny"]
        code, body = complete(url, "b")
        assert code == 404 and "does not exist" in body
        assert complete(url, "c") == (200, c_answer)
        assert listener(port) == server and status().run_id == rid

        # An adapter of a larger rank than the server accepts: refused, said why, the server untouched.
        dirs |= make_adapters(base, tmp_path / "adapters", "x", rank=32)
        runner.reload(write(tmp_path / "m", port, base, dirs, ["a", "c", "x"]))

        def refused() -> str | None:
            ready = status().condition("Ready")
            return ready.message if ready is not None and "adapter x failed to load" in ready.message else None

        message = eventually(refused, tick=runner.step, timeout=120, interval=0.2)
        assert "LoRA rank 32 is greater than max_lora_rank 8" in message, message
        assert models(url) == ["a", "c", "tiny"] and status().adapters == ["a", "c"]
        assert listener(port) == server and complete(url, "a") == answers["a"]
        log = backend.log_path(next(n for n in runner.state.resources["ModelRelease/r"].runs if "-serve-" in n))
        assert len(re.findall(r"^# \S+ \S+ start ", log.read_text(), re.M)) == 1  # one server process all along
    finally:
        runner.stop()
