"""Responsible sourcing: creators' opt-outs, applied to every document before anything else.

An opt-out names a domain (its subdomains are covered too) or a URL prefix. Lists come from the spec
and from opt-out files: one entry per line, `#` comments, and robots.txt-style `Disallow: /path`
lines, read relative to the most recent `Host: domain` line (`Disallow: /` opts out the whole
domain), or as plain URL prefixes when they are absolute. Licences are checked by the spec model itself (a source whose
licence is not allowed never validates), so this module only deals with opt-outs.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from lmforge.api.dataset import OptOut


def _domain_of(url: str) -> str:
    host = urlsplit(url if "://" in url else f"http://{url}").hostname or ""
    return host.lower().rstrip(".")


def parse_optout_text(text: str) -> tuple[list[str], list[str]]:
    """(domains, url prefixes) from an opt-out file."""
    domains: list[str] = []
    urls: list[str] = []
    current_host: str | None = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        key_l = key.strip().lower()
        if sep and key_l in ("host", "domain"):
            current_host = value.strip().lower()  # scopes the Disallow lines below it
            continue
        if sep and key_l == "disallow":
            path = value.strip()
            if not path:
                continue
            if "://" in path:
                urls.append(path)
            elif current_host and path == "/":
                domains.append(current_host)
            elif current_host:
                urls.append(f"{current_host}{path}")
            continue
        if sep and key_l in ("user-agent", "allow", "sitemap", "crawl-delay"):
            continue
        if "://" in line or "/" in line:
            urls.append(line)
        else:
            domains.append(line.lower().lstrip("*.").rstrip("."))
    return domains, urls


class OptOutList:
    """Decides whether a document's URL (or its source's domain) has been opted out."""

    def __init__(self, domains: list[str], urls: list[str]) -> None:
        self.domains = sorted({d.lower().lstrip("*.").rstrip(".") for d in domains if d.strip()})
        # URL prefixes are compared scheme-less, so http/https variants match alike.
        self.prefixes = sorted({self._strip_scheme(u) for u in urls if u.strip()})

    @staticmethod
    def _strip_scheme(url: str) -> str:
        return url.split("://", 1)[-1].lower()

    @classmethod
    def from_spec(cls, spec: OptOut, read_text: Callable[[str], str]) -> OptOutList:
        """The spec's lists plus the entries of its opt-out files (read with `read_text`)."""
        domains, urls = list(spec.domains), list(spec.urls)
        for location in spec.files:
            more_domains, more_urls = parse_optout_text(read_text(location))
            domains += more_domains
            urls += more_urls
        return cls(domains, urls)

    def _domain_blocked(self, domain: str) -> bool:
        return any(domain == d or domain.endswith("." + d) for d in self.domains)

    def blocked(self, url: str | None, source_domain: str | None) -> bool:
        """True when the document must be dropped."""
        if source_domain and self._domain_blocked(source_domain.lower()):
            return True
        if not url:
            return False
        if self.domains and self._domain_blocked(_domain_of(url)):
            return True
        bare = self._strip_scheme(url)
        return any(bare.startswith(p) for p in self.prefixes)

    def settings(self) -> dict[str, object]:
        """For the dataset card."""
        return {"domains": self.domains, "urlPrefixes": self.prefixes}
