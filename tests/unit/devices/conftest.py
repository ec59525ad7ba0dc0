"""What the device tests share: a hash too costly to check, and a guard against scrypt."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

#: scrypt parameters OpenSSL refuses under the checker's memory limit (64 MiB):
#: n=65536, r=8 needs 128 * 8 * (65536 + 1 + 2) bytes, a little more than 64 MiB.
TOO_BIG = "$scrypt$n=65536,r=8,p=1$c2FsdA==$a2V5"


@pytest.fixture
def no_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything runs scrypt (on the event loop or not)."""

    def scrypt(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("scrypt ran")

    monkeypatch.setattr(hashlib, "scrypt", scrypt)
