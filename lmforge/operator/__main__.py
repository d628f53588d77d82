"""`python -m lmforge.operator`: run the kopf operator with LMForge's handlers.

Settings come from `LMFORGE_*` environment variables (see `settings.py`); the namespaces to watch
from `--namespace` (repeatable) or `--all-namespaces` (the default when `LMFORGE_NAMESPACES` is
empty). `--liveness` serves kopf's health endpoint for the Deployment's probe.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace

import kopf

from lmforge.operator import metrics
from lmforge.operator.handlers import register
from lmforge.operator.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmforge.operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz",
                        help="kopf liveness endpoint URL ('' disables)")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("kopf").setLevel(logging.INFO if args.verbose else logging.WARNING)
    settings = Settings.from_env()
    if args.namespace:
        settings = replace(settings, namespaces=tuple(args.namespace))
    elif args.all_namespaces:
        settings = replace(settings, namespaces=())
    registry = kopf.OperatorRegistry()
    register(registry, settings)
    metrics.serve(settings.metrics_port, settings.metrics_addr)
    asyncio.run(kopf.operator(
        registry=registry, standalone=True, clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces), liveness_endpoint=args.liveness or None,
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
