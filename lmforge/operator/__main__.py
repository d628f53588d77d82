"""`python -m lmforge.operator`: run the kopf operator with LMForge's handlers.

Settings come from `LMFORGE_*` environment variables (see `settings.py`); the namespaces to watch
from `--namespace` (repeatable) or `--all-namespaces` (the default when `LMFORGE_NAMESPACES` is
empty). `--liveness` serves kopf's health endpoint for the Deployment's probe.

With `LMFORGE_LEADER_ELECTION=1` (the chart sets it when `replicaCount` > 1) the process first waits
for the Lease `LMFORGE_LEADER_LEASE` in its own namespace (`lmforge.operator.leader`), answering the
liveness probe meanwhile; it reconciles only while it holds the Lease and exits when it loses it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import kopf

from lmforge.operator import metrics
from lmforge.operator.handlers import register
from lmforge.operator.leader import LeaderElector, LeadershipLost
from lmforge.operator.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmforge.operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    parser.add_argument(
        "--liveness", default="http://0.0.0.0:8081/healthz", help="kopf liveness endpoint URL ('' disables)"
    )
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kopf").setLevel(logging.INFO if args.verbose else logging.WARNING)
    settings = Settings.from_env()
    if args.namespace:
        settings = replace(settings, namespaces=tuple(args.namespace))
    elif args.all_namespaces:
        settings = replace(settings, namespaces=())
    registry = kopf.OperatorRegistry()
    register(registry, settings)
    metrics.serve(settings.metrics_port, settings.metrics_addr)
    operator = kopf.operator(
        registry=registry,
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=args.liveness or None,
    )
    if os.environ.get("LMFORGE_LEADER_ELECTION", "") not in ("1", "true"):
        asyncio.run(operator)
        return 0
    try:
        asyncio.run(_elected(operator, args.liveness))
    except LeadershipLost as exc:
        logging.getLogger("lmforge.operator").error("stopping: %s", exc)
        return 1
    return 0


async def _standby_liveness(url: str) -> Any:
    """Answer the liveness probe while standing by (kopf serves it only once it runs)."""
    if not url:
        return None
    from aiohttp import web

    parts = urlsplit(url)
    app = web.Application()

    async def healthz(_request: web.Request) -> web.StreamResponse:
        return web.json_response({"standby": True})

    app.router.add_get(parts.path or "/", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, parts.hostname or "0.0.0.0", parts.port or 80, reuse_address=True).start()
    return runner


async def _elected(operator: Coroutine[Any, Any, Any], liveness: str) -> None:
    """Stand by until this replica holds the Lease, then run the operator while renewing it."""
    from lmforge.operator.kube.client import KubeClient

    client = KubeClient.from_environment()
    namespace = os.environ.get("LMFORGE_LEADER_NAMESPACE") or os.environ.get("POD_NAMESPACE") or "default"
    identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    elector = LeaderElector(
        client,
        namespace,
        os.environ.get("LMFORGE_LEADER_LEASE", "lmforge-operator"),
        identity,
        duration_s=int(os.environ.get("LMFORGE_LEADER_LEASE_SECONDS", "15")),
        renew_s=float(os.environ.get("LMFORGE_LEADER_RENEW_SECONDS", "5")),
    )
    standby = await _standby_liveness(liveness)
    try:
        await elector.acquire()
    finally:
        if standby is not None:
            await standby.cleanup()
    run = asyncio.ensure_future(operator)
    hold = asyncio.ensure_future(elector.hold())
    try:
        done, _ = await asyncio.wait({run, hold}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # LeadershipLost from `hold`, or the operator's own end
    finally:
        for task in (run, hold):
            task.cancel()
        await elector.release()
        await client.close()


if __name__ == "__main__":
    sys.exit(main())
