"""Allow-lists for what a resource may put into its pods: images, ServiceAccounts and Secrets.

Why: a resource's `compute.image`, `compute.serviceAccountName` and every Secret it names go
straight into pod specs the operator creates with its own rights, so whoever may create an LMForge
resource could otherwise run any image, as any ServiceAccount, with any Secret of the namespace. The
chart's ValidatingAdmissionPolicy rejects such a resource at `kubectl apply`; the operator checks
the same lists again (a cluster without the policy, or a resource admitted before it) and refuses
with `Ready=False`, reason `InvalidSpec`, naming the field.

Pattern syntax, the same here and in the chart's CEL: an entry ending in `*` allows every value
starting with what precedes it (`ghcr.io/lmforge/*`); any other entry allows exactly that value.
Pure: no I/O, table-tested in tests/reconcilers/test_policy.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lmforge.api.evalsuite import EvalSuite
from lmforge.api.kinds import Resource
from lmforge.api.release import ModelRelease


def allowed(value: str, patterns: Iterable[str]) -> bool:
    """Whether `value` matches one of `patterns` (`prefix*` or an exact value)."""
    for pattern in patterns:
        if pattern.endswith("*"):
            if value.startswith(pattern[:-1]):
                return True
        elif value == pattern:
            return True
    return False


@dataclass(frozen=True)
class Allowlists:
    """The lists; None means that kind of reference is not restricted (the embedded runner, or an
    operator started without them)."""

    images: tuple[str, ...] | None = None
    """Allowed `spec.compute.image` values (the operator's own trainer image is always allowed)."""
    service_accounts: tuple[str, ...] | None = None
    """Allowed `spec.compute.serviceAccountName` values."""
    secrets: tuple[str, ...] | None = None
    """Allowed names of the Secrets a resource refers to (the operator's own S3 Secret is always
    allowed: it is configured by the administrator, not named by the resource)."""
    default_image: str | None = None
    """The operator's trainer image: a resource may name it explicitly."""
    default_secret: str | None = None
    """The operator's S3 Secret: a resource may name it explicitly."""

    @property
    def restricts(self) -> bool:
        return any(v is not None for v in (self.images, self.service_accounts, self.secrets))


def secret_refs(resource: Resource) -> list[tuple[str, str]]:
    """(field path, Secret name) of every Secret the resource names, in the order of the spec."""
    compute = resource.spec.compute
    out: list[tuple[str, str]] = []
    if compute.s3_credentials_secret:
        out.append(("spec.compute.s3CredentialsSecret", compute.s3_credentials_secret))
    for env, ref in sorted(compute.secret_env.items()):
        out.append((f"spec.compute.secretEnv.{env}.name", ref.name))
    if isinstance(resource, ModelRelease) and resource.spec.serving.api_key_secret is not None:
        out.append(("spec.serving.apiKeySecret.name", resource.spec.serving.api_key_secret.name))
    if (
        isinstance(resource, EvalSuite)
        and resource.spec.endpoint is not None
        and resource.spec.endpoint.api_key_secret is not None
    ):
        out.append(("spec.endpoint.apiKeySecret.name", resource.spec.endpoint.api_key_secret.name))
    return out


def violations(resource: Resource, lists: Allowlists) -> list[str]:
    """Each reference the lists forbid, as `field: why` (empty when all are allowed)."""
    compute = resource.spec.compute
    out: list[str] = []
    image = compute.image
    if lists.images is not None and image and image != lists.default_image and not allowed(image, lists.images):
        out.append(f"spec.compute.image: image {image!r} is not allowed (allowed: {_shown(lists.images)})")
    account = compute.service_account_name
    if lists.service_accounts is not None and account and not allowed(account, lists.service_accounts):
        out.append(
            f"spec.compute.serviceAccountName: ServiceAccount {account!r} is not allowed "
            f"(allowed: {_shown(lists.service_accounts)})"
        )
    if lists.secrets is not None:
        for field, name in secret_refs(resource):
            if name != lists.default_secret and not allowed(name, lists.secrets):
                out.append(f"{field}: Secret {name!r} is not allowed (allowed: {_shown(lists.secrets)})")
    return out


def _shown(patterns: tuple[str, ...]) -> str:
    return ", ".join(patterns) if patterns else "none"
