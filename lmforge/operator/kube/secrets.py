"""Which Secrets a stage run's pods need, and what is missing of them. Pure: the handlers GET the
Secrets (by name: the operator may `get` Secrets, never list or watch them) and feed the answers in.

Why check before creating a Job: a pod whose `envFrom`/`secretKeyRef` names a missing Secret (or
key) sits in `CreateContainerConfigError` without ever failing, so the resource would look Pending
forever. Waiting with a condition that names the Secret and the field that refers to it tells the
user what to create; the run starts on the next look once it exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lmforge.operator.kube.pods import s3_secret
from lmforge.operator.reconcile.runs import ENDPOINT_API_KEY_ENV, SERVING_API_KEY_ENV
from lmforge.operator.reconcile.types import StageRun
from lmforge.operator.settings import Settings

_FIELD_OF_ENV = {
    SERVING_API_KEY_ENV: "spec.serving.apiKeySecret",
    ENDPOINT_API_KEY_ENV: "spec.endpoint.apiKeySecret or the release's",
}


@dataclass(frozen=True)
class SecretNeed:
    """One Secret (and, for a `secretKeyRef`, one key in it) that a run's pods mount."""

    name: str
    key: str | None
    """None: the whole Secret (`envFrom`)."""
    source: str
    """The field or setting that names it, for the condition message."""


def secret_needs(run: StageRun, settings: Settings) -> list[SecretNeed]:
    """Every Secret the run's containers refer to, in the order the pod spec does."""
    out: list[SecretNeed] = []
    s3 = s3_secret(run, settings)
    if s3:
        source = (
            "spec.compute.s3CredentialsSecret"
            if run.compute.s3_credentials_secret
            else "the operator's S3 Secret (LMFORGE_S3_SECRET)"
        )
        out.append(SecretNeed(s3, None, source))
    for env, ref in run.compute.secret_env.items():
        out.append(SecretNeed(ref.name, ref.key, f"spec.compute.secretEnv.{env}"))
    for env, ref in run.secret_env.items():
        out.append(SecretNeed(ref.name, ref.key, _FIELD_OF_ENV.get(env, env)))
    return out


def missing(needs: list[SecretNeed], found: Mapping[str, frozenset[str] | None]) -> tuple[str, ...]:
    """What is missing, as phrases for the condition. `found`: Secret name → its keys, or None when
    it does not exist; a name absent from `found` was not looked up (e.g. RBAC refused) and is
    assumed present rather than blocking the run on a guess."""
    out: list[str] = []
    absent: set[str] = set()
    for need in needs:
        if need.name not in found or need.name in absent:
            continue
        keys = found[need.name]
        if keys is None:
            absent.add(need.name)  # named once, with the first field that refers to it
            phrase = f"Secret {need.name} ({need.source}) to exist"
        elif need.key is not None and need.key not in keys:
            phrase = f"key {need.key} in Secret {need.name} ({need.source})"
        else:
            continue
        if phrase not in out:
            out.append(phrase)
    return tuple(out)
