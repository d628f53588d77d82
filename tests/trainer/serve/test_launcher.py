"""Launcher pieces that need no running server: hash verification, port checks, the command line,
and refusing models vLLM's CPU build cannot serve."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.api.release import Serving
from lmforge.trainer.errors import InvalidInput
from lmforge.trainer.serve.launcher import (
    VllmServer,
    check_servable,
    fetch_verified,
    port_free,
    server_command,
    server_env,
    vllm_env,
)
from trainer.compress.world import World

pytestmark = pytest.mark.ml


def test_verified_copy_matches_and_a_tampered_file_is_refused(world: World) -> None:
    uri = world.teacher.artifacts["model"]
    local = fetch_verified(uri)
    assert (local / "config.json").read_bytes() == (world.teacher_dir / "config.json").read_bytes()
    stored = Path(uri.removeprefix("file://")) / "config.json"
    original = stored.read_bytes()
    try:
        stored.write_bytes(original.replace(b"hidden_size", b"hidden_sizf"))
        for cached in local.glob("config.json"):
            cached.unlink()  # force a fresh download of the tampered file
        with pytest.raises(InvalidInput, match=r"hash check.*config\.json"):
            fetch_verified(uri)
    finally:
        stored.write_bytes(original)


def test_a_port_in_use_is_refused_with_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InvalidInput, match=f"serving.port {port} .* already in use"):
            port_free(port)
        server = VllmServer([sys.executable, "-c", "pass"], port, "m")
        with pytest.raises(InvalidInput, match="already in use"):
            server.start()
        assert server.proc is None  # nothing was started


def test_command_line_follows_spec_serving(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))
    serving = Serving(
        dtype="bfloat16",
        max_model_len=512,
        tensor_parallel_size=2,
        gpu_memory_utilization=0.8,
        port=9001,
        extra_args=["--enforce-eager"],
        lora_adapters=[{"name": "sft"}],
        max_lora_rank=8,
    )
    cmd = server_command(tmp_path, serving, "chat", gpus=2, lora={"sft": adapter}, python="py")
    line = " ".join(cmd)
    assert cmd[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]
    for part in (
        "--port 9001",
        "--served-model-name chat",
        "--dtype bfloat16",
        "--max-model-len 512",
        "--tensor-parallel-size 2",
        "--gpu-memory-utilization 0.8",
        "--enable-lora",
        "--max-loras 4",
        "--max-lora-rank 8",
        f"--lora-modules sft={adapter}",
    ):
        assert part in line
    assert cmd[-1] == "--enforce-eager"
    cpu = " ".join(server_command(tmp_path, Serving(), "m", gpus=0))
    assert "--tensor-parallel-size" not in cpu and "--gpu-memory-utilization" not in cpu and "--dtype auto" in cpu
    assert "--enable-lora" not in cpu and server_env(Serving(), gpus=0) == {"VLLM_CPU_KVCACHE_SPACE": "1"}


def test_a_release_that_may_take_adapters_later_starts_with_lora_enabled(tmp_path: Path) -> None:
    """`maxLoras` set and no adapter yet: LoRA is on, runtime loading allowed, the rank rounded up to one
    vLLM accepts, so adapters added later load into this server."""
    serving = Serving(max_loras=3, max_lora_rank=12)
    line = " ".join(server_command(tmp_path, serving, "m", gpus=0))
    assert "--enable-lora --max-loras 3 --max-lora-rank 16" in line and "--lora-modules" not in line
    assert server_env(serving, gpus=0)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    adapter = tmp_path / "big"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 40}))
    started = server_command(tmp_path, serving, "m", gpus=0, lora={"big": adapter})
    assert "--max-lora-rank 64" in " ".join(started)  # the largest rank it starts with, rounded up


def test_models_the_cpu_build_cannot_serve_are_refused_before_start(world: World, tmp_path: Path) -> None:
    config = json.loads((world.teacher_dir / "config.json").read_text())
    check_servable(world.teacher_dir, gpus=0)  # a plain Llama with head_dim 32 is fine
    cases = {
        "head_dim": ({**config, "head_dim": 16}, "head_dim ≥ 32"),
        "arch": ({**config, "architectures": ["NoSuchModelForCausalLM"]}, "cannot serve architecture"),
        "w8a16": (
            {
                **config,
                "quantization_config": {
                    "config_groups": {"group_0": {"weights": {"type": "int", "num_bits": 8}, "input_activations": None}}
                },
            },
            "8-bit weight-only",
        ),
    }
    for name, (cfg, message) in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(InvalidInput, match=message):
            check_servable(d, gpus=0)
    check_servable(tmp_path / "w8a16", gpus=1)  # fine on a GPU


AMX_CHILD = """
import ctypes, json, sitecustomize
v = ctypes.c_ulong()
ctypes.CDLL(None).syscall(158, 0x1022, ctypes.byref(v))  # ARCH_GET_XCOMP_PERM
print(json.dumps({"site": sitecustomize.__file__, "xtiledata": bool(v.value & (1 << 18))}))
"""


def has_amx() -> bool:
    return sys.platform == "linux" and " amx_tile" in Path("/proc/cpuinfo").read_text()


def test_every_vllm_process_may_use_amx(tmp_path: Path) -> None:
    """vLLM's CPU kernels use AMX tiles without asking Linux for them (a bf16 model then dies with
    SIGILL, 'VllmWorker-0 died unexpectedly (exit code: -4)'); the permission is cleared on exec,
    and vLLM spawns its workers as new interpreters. So every interpreter started with the server's
    environment asks for it, and a distribution's own sitecustomize still runs after LMForge's."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("import os\nos.environ['THEIRS_RAN'] = '1'\n")
    env = vllm_env({**os.environ, "PYTHONPATH": str(theirs)})
    child = AMX_CHILD + "import os; print(os.environ.get('THEIRS_RAN'))\n"
    out = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, check=True)
    info, theirs_ran = out.stdout.splitlines()
    got = json.loads(info)
    assert got["site"].endswith("cpu_site/sitecustomize.py")
    assert theirs_ran == "1"
    bare = subprocess.run(
        [
            sys.executable,
            "-c",
            AMX_CHILD.replace(", sitecustomize", "").replace('"site": sitecustomize.__file__, ', ""),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    if has_amx():  # the hook is what grants it: a plain interpreter has no permission
        assert got["xtiledata"] and not json.loads(bare.stdout)["xtiledata"]
    else:
        assert not got["xtiledata"]
