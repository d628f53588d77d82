"""Starting, probing and stopping vLLM's OpenAI-compatible server for a verified local model copy.

The server runs as `python -m vllm.entrypoints.openai.api_server` (`VLLM_API_SERVER`) in its own
process group, so one SIGTERM
reaches the API server and its engine-core children alike.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.api.contract import VLLM_API_SERVER
from lmforge.api.release import DType, Serving
from lmforge.store import ArtifactCorrupt, open_store, read_manifest
from lmforge.trainer.artifacts import cache_dir, fetch, split_uri
from lmforge.trainer.errors import InvalidInput, StageError
from lmforge.trainer.precision import KEEP_ENV, cpu_has_native_bf16

HOST = "127.0.0.1"
CPU_SITE = Path(__file__).with_name("cpu_site")
"""Put first on every vLLM server's PYTHONPATH: its `sitecustomize` lets vLLM's CPU kernels use AMX
(without it a bf16 model dies with SIGILL on AMX CPUs) and keeps no core from the model on small
machines; see cpu_site/sitecustomize.py."""
CPU_UNSERVABLE: dict[tuple[Any, Any, str], str] = {
    ("int", 8, "weight-only"): "vLLM 0.32's CPU backend has no 8-bit weight-only (W8A16) kernel; "
    "serve it with gpus ≥ 1, or release it as w8a8 or int4"
}


def fetch_verified(uri: str, dest: Path | None = None) -> Path:
    """A local copy of the model artifact in `dest` (default: the cache), every file checked against
    its manifest's sha256.

    Always downloads (even from a local store) so the check runs; files already there with the right
    hash are kept, so an interrupted download resumes.
    """
    root, leaf = split_uri(uri)
    manifest = read_manifest(open_store(root), leaf)
    if manifest is None:
        raise InvalidInput(f"model {uri}: no MANIFEST.json, the artifact is incomplete")
    key = hashlib.sha256(f"{uri}@{manifest.created.isoformat()}".encode()).hexdigest()[:24]
    try:
        return fetch(uri, dest or cache_dir() / "serve" / key)
    except ArtifactCorrupt as exc:
        raise InvalidInput(f"model failed its hash check, refusing to serve it: {exc}") from None


def check_servable(model_dir: Path, gpus: int) -> None:
    """Refuse, before a minute of vLLM start-up, a model this vLLM build cannot serve."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"model {model_dir}: no readable config.json: {exc}") from None
    archs = config.get("architectures") or []
    try:
        from vllm import ModelRegistry
    except ImportError:  # a serving pod's init container (trainer image): vLLM checks it itself
        pass
    else:
        if not any(a in set(ModelRegistry.get_supported_archs()) for a in archs):
            raise InvalidInput(f"vLLM cannot serve architecture {archs or '(none in config.json)'}")
    head_dim = config.get("head_dim") or config.get("hidden_size", 0) // max(config.get("num_attention_heads", 1), 1)
    if gpus == 0 and head_dim < 32:
        raise InvalidInput(f"vLLM's CPU attention needs head_dim ≥ 32; this model has {head_dim}")
    for group in (config.get("quantization_config") or {}).get("config_groups", {}).values():
        w, a = group.get("weights") or {}, group.get("input_activations")
        reason = CPU_UNSERVABLE.get((w.get("type"), w.get("num_bits"), "weight-only" if a is None else "w+a"))
        if gpus == 0 and reason:
            raise InvalidInput(reason)


def port_free(port: int, host: str = HOST) -> None:
    """Refuse a port something already listens on (vLLM would fail only after loading the model)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise InvalidInput(
                f"serving.port {port} on {host} is already in use ({exc.strerror}); "
                "stop what listens there or choose another port"
            ) from None


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The `--max-lora-rank` values vLLM 0.32 accepts."""
RUNTIME_LORA_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
"""Lets `/v1/load_lora_adapter` and `/v1/unload_lora_adapter` change a running server's adapters."""


def adapter_rank(adapter_dir: Path) -> int:
    """The rank `r` a peft adapter directory's `adapter_config.json` declares."""
    try:
        return int(json.loads((adapter_dir / "adapter_config.json").read_text()).get("r", 16))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"LoRA adapter {adapter_dir}: no readable adapter_config.json: {exc}") from None


def vllm_lora_rank(rank: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that holds `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise InvalidInput(f"LoRA rank {rank} exceeds vLLM's largest supported rank {VLLM_LORA_RANKS[-1]}")


def server_env(serving: Serving, gpus: int) -> dict[str, str]:
    """The server's environment beyond ours: the CPU KV-cache size, runtime LoRA loading."""
    env = {} if gpus else {"VLLM_CPU_KVCACHE_SPACE": str(max(1, math.ceil(serving.kv_cache_gib)))}
    return env | (RUNTIME_LORA_ENV if serving.lora_enabled else {})


def quantized(model_dir: Path) -> bool:
    """Whether the model's config.json declares a quantization (its kernels fix the activation dtype)."""
    try:
        return bool(json.loads((model_dir / "config.json").read_text()).get("quantization_config"))
    except (OSError, ValueError):
        return False


def served_dtype(model_dir: Path, serving: Serving, gpus: int) -> tuple[str, str | None]:
    """vLLM's `--dtype` for `serving.dtype`, and a note when it is not the one asked for.

    Why: vLLM's CPU backend resolves `auto` to bfloat16 on every x86 CPU, but without AVX512-BF16 or
    AMX its bf16 GEMMs are emulated (see `lmforge.trainer.precision`); on an AVX2-only EPYC the tiny
    release served 1.4-2x more tokens/s in float32 (benchmarks/release_serving.py), and the gap grows
    with the model, as training's ~100x does. So `auto` and `bfloat16` serve in float32 on such a
    CPU, as training does; float32 weights take twice bf16's memory. A quantized model keeps the
    dtype asked for (its kernels choose), GPUs are untouched, and `LMFORGE_CPU_BF16=emulated` keeps
    bf16."""
    asked = serving.dtype.value
    if gpus or serving.dtype not in (DType.AUTO, DType.BFLOAT16) or os.environ.get(KEEP_ENV) == "emulated":
        return asked, None
    if quantized(model_dir) or cpu_has_native_bf16():
        return asked, None
    return "float32", (
        f"spec.serving.dtype: {asked} served as float32: this CPU has no native bf16 (AVX512-BF16/AMX), "
        f"where vLLM's bf16 is emulated and slower (set {KEEP_ENV}=emulated to keep it)"
    )


def server_options(
    model_dir: Path, serving: Serving, name: str, *, gpus: int, lora: dict[str, Path] | None = None
) -> dict[str, Any]:
    """vLLM's options for `spec.serving`, as `--config` YAML keys (`--key value` on a command
    line): one source for the local server's argv and for the file a serving pod's init container
    writes. Host, port, the API key and `extraArgs` are not here: the caller adds them. A dtype
    changed by `served_dtype` is announced on stderr (the stage's and the init container's log)."""
    dtype, note = served_dtype(model_dir, serving, gpus)
    if note:
        print(f"lmforge: {note}", file=sys.stderr, flush=True)
    opts: dict[str, Any] = {"model": str(model_dir), "served-model-name": name, "dtype": dtype}
    if serving.max_model_len:
        opts["max-model-len"] = serving.max_model_len
    if gpus > 0:
        opts["tensor-parallel-size"] = serving.tensor_parallel_size
        opts["gpu-memory-utilization"] = serving.gpu_memory_utilization
    if serving.lora_enabled or lora:
        ranks = [serving.max_lora_rank, *(adapter_rank(p) for p in (lora or {}).values())]
        opts |= {"enable-lora": True, "max-loras": serving.lora_slots, "max-lora-rank": vllm_lora_rank(max(ranks))}
        if lora:
            opts["lora-modules"] = [f"{n}={p}" for n, p in lora.items()]
    return opts


def vllm_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a vLLM process: `CPU_SITE` first on PYTHONPATH (harmless where there is no AMX)."""
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(CPU_SITE)]
    return {**env, "PYTHONPATH": os.pathsep.join([str(CPU_SITE), *rest])}


def option_argv(opts: dict[str, Any]) -> list[str]:
    """`{"a-b": 1, "flag": True, "list": [x, y]}` → `--a-b 1 --flag --list x y`."""
    argv: list[str] = []
    for key, value in opts.items():
        if value is True:
            argv.append(f"--{key}")
        elif isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        elif value is not False and value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def server_command(
    model_dir: Path,
    serving: Serving,
    name: str,
    *,
    gpus: int,
    host: str = HOST,
    lora: dict[str, Path] | None = None,
    python: str = sys.executable,
) -> list[str]:
    """vLLM's command line for `spec.serving` (the API key travels in the environment, not here)."""
    opts = server_options(model_dir, serving, name, gpus=gpus, lora=lora)
    return [
        python,
        "-m",
        VLLM_API_SERVER,
        *option_argv(opts),
        "--host",
        host,
        "--port",
        str(serving.port),
        *serving.extra_args,
    ]


@dataclass
class VllmServer:
    """One vLLM server process: start, wait until it answers, stop gracefully."""

    command: list[str]
    port: int
    model_name: str
    env: dict[str, str] = field(default_factory=dict)
    api_key: str | None = None
    host: str = HOST
    proc: subprocess.Popen[str] | None = None
    log_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=40))

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        port_free(self.port, self.host)
        env = vllm_env({**os.environ, **self.env})
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        self.proc = subprocess.Popen(
            self.command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        """vLLM's log lines go to our stderr (stdout carries our records) and a tail for errors."""
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log_tail.append(line.rstrip())
            print(line, end="", file=sys.stderr, flush=True)

    def request(self, path: str, body: dict[str, Any] | None = None, timeout: float = 60) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else {}

    def died(self) -> str | None:
        """Why the server is gone, or None while it runs."""
        if self.proc is None or self.proc.poll() is None:
            return None
        tail = " | ".join(list(self.log_tail)[-5:])
        return f"vLLM exited with status {self.proc.returncode}: {tail}"

    def wait_ready(self, timeout: float = 600, cancel: threading.Event | None = None) -> float:
        """Poll /health, then ask for one token; returns the seconds it took. Raises if it dies or
        `cancel` is set."""
        start = time.monotonic()
        healthy = False
        while time.monotonic() - start < timeout:
            if (why := self.died()) is not None:
                raise StageError(why)
            if cancel is not None and cancel.is_set():
                raise StageError("stopped before the server was ready")
            try:
                if not healthy:
                    self.request("/health", timeout=5)
                    healthy = True
                out = self.request(
                    "/v1/completions", {"model": self.model_name, "prompt": "a", "max_tokens": 1}, timeout=60
                )
                if out.get("choices"):
                    return time.monotonic() - start
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1.0)
        raise StageError(f"vLLM did not become ready within {timeout:.0f} s")

    def stop(self, grace: float = 30) -> int | None:
        """SIGTERM the server's process group, SIGKILL it after `grace` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            return self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()
        except ProcessLookupError:
            return self.proc.wait()
