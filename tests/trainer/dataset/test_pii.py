"""PII redaction: each type, and look-alikes that must be left alone (see the rules in pii.py)."""

from __future__ import annotations

import pytest

from lmforge.api.dataset import PiiType
from lmforge.trainer.dataset.pii import Redactor, luhn_ok

REDACTED = {
    "email": ("Write to jane.doe+news@mail.example.com today.", "Write to <EMAIL> today.", "email"),
    "phone us": ("Call (555) 301-2044 now.", "Call <PHONE> now.", "phone"),
    "phone dashed": ("Call 555-301-2044.", "Call <PHONE>.", "phone"),
    "phone international": ("Ring +44 20 7946 0958 please.", "Ring <PHONE> please.", "phone"),
    "ipv4": ("The server at 192.168.10.20 is down.", "The server at <IP> is down.", "ip"),
    "ipv4 end of sentence": ("Connect to 10.0.0.1.", "Connect to <IP>.", "ip"),
    "ipv6": ("Host 2001:db8:85a3::8a2e:370:7334 replied.", "Host <IP> replied.", "ip"),
    "credit card spaced": ("Card 4111 1111 1111 1111 expires.", "Card <CREDIT_CARD> expires.", "creditCard"),
    "credit card plain": ("Card 5500000000000004 used.", "Card <CREDIT_CARD> used.", "creditCard"),
    "aws key": ("key AKIAIOSFODNN7EXAMPLE in logs", "key <SECRET> in logs", "secret"),
    "github token": ("token ghp_" + "a1B2" * 9 + " leaked", "token <SECRET> leaked", "secret"),
    "assigned password": ("password = hunter2hunter2hunter2", "password = <SECRET>", "secret"),
    "api key json": ('"api_key": "abcd1234efgh5678ijkl"', '"api_key": "<SECRET>"', "secret"),
    "private key": ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "<SECRET>", "secret"),
}

KEPT = {
    "version number like an ip": "Upgrade to version 1.2.3.4 before Friday.",
    "v-prefixed version": "Released v10.0.0.1 with fixes.",
    "release with words between": "Python release 3.11.4.1 is out.",
    "longer dotted number": "Section 1.2.3.4.5 of the manual.",
    "octets out of range": "The value 300.1.2.3 is not an address.",
    "leading zeros": "Code 01.02.03.04 printed on the box.",
    "date": "Meet on 2024-01-15 at noon.",
    "time": "It starts at 12:30:45 sharp.",
    "cpp scope": "Use std::vector and a :: b in prose.",
    "plain digit run id": "Order 5551234567 shipped.",
    "card failing luhn": "Number 4111 1111 1111 1112 is invalid.",
    "short number": "Room 101 on floor 3.",
    "at sign without domain": "Meet @ noon, ask @bob.",
    "short assigned value": "password = abc",
}


@pytest.mark.parametrize("name", list(REDACTED))
def test_redacts(name: str) -> None:
    text, expected, kind = REDACTED[name]
    r = Redactor(list(PiiType))
    assert r(text) == expected
    assert r.counts[kind] == 1 and sum(r.counts.values()) == 1


@pytest.mark.parametrize("name", list(KEPT))
def test_leaves_look_alikes(name: str) -> None:
    r = Redactor(list(PiiType))
    assert r(KEPT[name]) == KEPT[name]
    assert sum(r.counts.values()) == 0


def test_only_configured_types_and_luhn() -> None:
    r = Redactor([PiiType.EMAIL])
    assert r("a@b.example.com 10.0.0.1") == "<EMAIL> 10.0.0.1"
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
