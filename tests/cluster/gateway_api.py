"""The Gateway API's standard CRDs (Gateway, HTTPRoute...), from the Go module proxy like every
other cluster part (tests/cluster/build.sh): `sigs.k8s.io/gateway-api`'s module zip carries them
under config/crd/standard/. Cached outside the repository in the shared Go module cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

GATEWAY_API_VERSION = os.environ.get("GATEWAY_API_VERSION", "v1.2.1")
CRDS = ("gatewayclasses", "gateways", "httproutes")


def gateway_api_crds() -> list[Path]:
    """The CRD files of GatewayClass, Gateway and HTTPRoute (downloaded once, then cached)."""
    cache = Path(os.environ.get("LMFORGE_CACHE", Path.home() / ".cache" / "lmforge"))
    go = shutil.which("go") or "/usr/local/go/bin/go"
    env = {
        **os.environ,
        "GOMODCACHE": str(cache / "go" / "mod"),
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-mod=mod",
        "GOWORK": "off",
    }
    with tempfile.TemporaryDirectory() as tmp:  # outside any module: a plain download
        out = subprocess.run(
            [go, "mod", "download", "-json", f"sigs.k8s.io/gateway-api@{GATEWAY_API_VERSION}"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
    standard = Path(json.loads(out.stdout)["Dir"]) / "config" / "crd" / "standard"
    return [standard / f"gateway.networking.k8s.io_{name}.yaml" for name in CRDS]
