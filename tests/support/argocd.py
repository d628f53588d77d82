"""Argo CD's view of an LMForge resource: the chart's health check run by a real Lua runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LUA = Path(__file__).resolve().parents[2] / "charts" / "lmforge" / "files" / "argocd-health.lua"


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) as Argo CD would show them for `obj`."""
    from lupa import LuaRuntime

    lua = LuaRuntime(unpack_returned_tuples=True)

    def table(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: table(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([table(v) for v in value])
        return value

    lua.globals().obj = table(obj)
    hs = lua.execute(LUA.read_text())
    return str(hs["status"]), str(hs["message"])
