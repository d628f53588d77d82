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
from lmforge.trainer.serve import launcher
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
    cmd = server_command(tmp_path, serving, "chat", gpus=2, lora={"sft": adapter}, python="py")  # GPUs: as asked
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
    cpu = " ".join(server_command(tmp_path, Serving(dtype="float16"), "m", gpus=0))
    assert "--tensor-parallel-size" not in cpu and "--gpu-memory-utilization" not in cpu and "--dtype float16" in cpu
    assert "--enable-lora" not in cpu and server_env(Serving(), gpus=0) == {"VLLM_CPU_KVCACHE_SPACE": "1"}


SERVED_DTYPES = {
    # case: (serving.dtype, gpus, CPU has native bf16, quantized model, LMFORGE_CPU_BF16, --dtype)
    "auto on a CPU without bf16 serves float32": ("auto", 0, False, False, None, "float32"),
    "bfloat16 on a CPU without bf16 serves float32": ("bfloat16", 0, False, False, None, "float32"),
    "auto on a CPU with native bf16 stays auto": ("auto", 0, True, False, None, "auto"),
    "bfloat16 on a GPU stays bfloat16": ("bfloat16", 1, False, False, None, "bfloat16"),
    "float16 is never changed": ("float16", 0, False, False, None, "float16"),
    "a quantized model keeps its dtype": ("auto", 0, False, True, None, "auto"),
    "the emulation can be kept on purpose": ("bfloat16", 0, False, False, "emulated", "bfloat16"),
}


@pytest.mark.parametrize("case", SERVED_DTYPES)
def test_the_served_dtype_avoids_emulated_bf16_on_the_cpu(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asked, gpus, native, quantized, keep, expected = SERVED_DTYPES[case]
    monkeypatch.setattr(launcher, "cpu_has_native_bf16", lambda: native)
    if keep:
        monkeypatch.setenv(launcher.KEEP_ENV, keep)
    else:
        monkeypatch.delenv(launcher.KEEP_ENV, raising=False)
    config = {"architectures": ["LlamaForCausalLM"]}
    if quantized:
        config["quantization_config"] = {"quant_method": "compressed-tensors"}  # type: ignore[assignment]
    (tmp_path / "config.json").write_text(json.dumps(config))
    line = " ".join(server_command(tmp_path, Serving(dtype=asked), "m", gpus=gpus))
    assert f"--dtype {expected} " in line
    note = capsys.readouterr().err
    assert (f"spec.serving.dtype: {asked} served as float32" in note) == (expected != asked)


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


RESERVED = {
    # case: (usable cores, VLLM_CPU_NUM_OF_RESERVED_CPU already set, value set)
    "2 cores: none reserved": (2, None, "0"),
    "4 cores: none reserved": (4, None, "0"),
    "5 cores: vLLM's own reservation": (5, None, None),
    "the environment's choice is kept": (2, "1", None),
}


@pytest.mark.parametrize("case", RESERVED)
def test_small_machines_reserve_no_core_from_the_model(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "as-before")  # importing the hook leaves it alone
    from lmforge.trainer.serve.cpu_site import sitecustomize as site

    cores, given, expected = RESERVED[case]
    environ = {site.RESERVED_ENV: given} if given is not None else {}
    assert site.reserved_cores(cores, environ) == expected


def test_every_vllm_process_on_a_small_cpuset_gets_the_core_back() -> None:
    """A server process whose cpuset is one core starts with the reservation off; one told otherwise
    keeps what it was told (the spawned engine and workers inherit the API server's value)."""
    child = "import os; print(os.environ.get('VLLM_CPU_NUM_OF_RESERVED_CPU'))"
    env = vllm_env({k: v for k, v in os.environ.items() if k != "VLLM_CPU_NUM_OF_RESERVED_CPU"})

    def run(extra: dict[str, str]) -> str:
        out = subprocess.run(
            [sys.executable, "-c", child],
            env={**env, **extra},
            preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    assert run({}) == "0"
    assert run({"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}) == "1"
