"""`python -m lmforge.trainer serve`: serve the release's model with vLLM until told to stop.

In the cluster this is the serving container's command; locally the embedded runner starts it as a
long-running process. Once the server answers a one-token completion and the smoke test passes it
prints a progress record ("serving at …") and writes the `result` record with the endpoint, then keeps
serving until SIGTERM/SIGINT, stops vLLM gracefully and exits 0. The gate (EvalSuite passed) is the
reconciler's job: this stage is only started once it has passed.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

from lmforge.api.contract import SERVE_PORT_ENV
from lmforge.api.release import ModelRelease
from lmforge.trainer.context import StageContext, StageOutcome
from lmforge.trainer.errors import InvalidInput, StageError
from lmforge.trainer.serve.launcher import VllmServer, check_servable, fetch_verified, server_command, server_env
from lmforge.trainer.serve.prepare import adapter_uris, model_uri
from lmforge.trainer.serve.smoke import smoke

READY_TIMEOUT_S = float(os.environ.get("LMFORGE_SERVE_READY_TIMEOUT", "900"))


def api_key(release: ModelRelease) -> str | None:
    """From the Secret: the operator maps it to $LMFORGE_API_KEY; the embedded runner passes an
    environment variable named after the Secret's key."""
    ref = release.spec.serving.api_key_secret
    if ref is None:
        return None
    value = os.environ.get("LMFORGE_API_KEY") or os.environ.get(ref.key)
    if not value:
        raise InvalidInput(
            f"serving.apiKeySecret {ref.name}/{ref.key}: not provided (set ${ref.key} or $LMFORGE_API_KEY)"
        )
    return value


def run(ctx: StageContext) -> StageOutcome:
    release = ctx.resource
    assert isinstance(release, ModelRelease)
    serving, gpus = release.spec.serving, release.spec.gpus
    if os.environ.get(SERVE_PORT_ENV):  # blue-green under `lmforge run`: the old server holds serving.port
        serving = serving.model_copy(update={"port": int(os.environ[SERVE_PORT_ENV])})
    name = serving.served_model_name or release.metadata.name
    ctx.reporter.progress(0, 3, message="fetching and verifying the model", force=True)
    model_dir = fetch_verified(model_uri(ctx.spec, release))
    check_servable(model_dir, gpus)
    lora = {name: fetch_verified(uri) for name, uri in adapter_uris(ctx.spec, release).items()}
    env = server_env(serving, gpus)
    server = VllmServer(
        server_command(model_dir, serving, name, gpus=gpus, lora=lora),
        serving.port,
        name,
        env=env,
        api_key=api_key(release),
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        ctx.reporter.progress(1, 3, message=f"starting vLLM on port {serving.port}", force=True)
        server.start()
        ready_s = server.wait_ready(READY_TIMEOUT_S, cancel=stop)
        metrics = {"ready_seconds": ready_s, **smoke(server)}
        endpoint = f"{server.base_url}/v1"
        ctx.reporter.progress(3, 3, message=f"serving at {endpoint}", metrics=metrics, force=True)
        ctx.reporter.result({"endpoint": endpoint}, metrics, message=f"serving at {endpoint}")
        while not stop.wait(1.0):
            if (why := server.died()) is not None:
                raise StageError(why)
        return StageOutcome({"endpoint": endpoint}, metrics, writes_result=False)  # reported above
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
