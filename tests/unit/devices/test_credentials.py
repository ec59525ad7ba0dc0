"""Credentials: a supplied password hash is checked by reading it, never by running scrypt."""

from __future__ import annotations

import secrets

import pytest

from headwater.devices import InvalidDevice
from headwater.devices.credentials import check_password_hash, verify_chosen_password
from headwater.mqtt.auth import hash_password
from tests.unit.devices.conftest import TOO_BIG


def test_a_hash_is_accepted_as_it_is() -> None:
    hashed = hash_password("correct horse")
    assert check_password_hash(hashed) == hashed
    # The largest that fits: n=32768, r=8 (about 32 MiB), p as large as the checker allows.
    check_password_hash("$scrypt$n=32768,r=8,p=16$c2FsdA==$a2V5")


def test_checking_a_hash_runs_no_scrypt(no_scrypt: None) -> None:
    check_password_hash("$scrypt$n=16384,r=8,p=1$c2FsdA==$a2V5")
    with pytest.raises(InvalidDevice):
        check_password_hash(TOO_BIG)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param(TOO_BIG, "memory", id="memory"),
        pytest.param("$scrypt$n=1048576,r=1,p=1$c2FsdA==$a2V5", "memory", id="memory-n"),
        pytest.param("$scrypt$n=16384,r=32,p=1$c2FsdA==$a2V5", "memory", id="memory-r"),
        pytest.param("$scrypt$n=16384,r=8,p=17$c2FsdA==$a2V5", "out of range", id="p"),
        pytest.param("$scrypt$n=16384,r=8,p=0$c2FsdA==$a2V5", "out of range", id="p-zero"),
        pytest.param("$scrypt$n=2097152,r=1,p=1$c2FsdA==$a2V5", "out of range", id="n"),
        pytest.param("$scrypt$n=1000,r=8,p=1$c2FsdA==$a2V5", "out of range", id="n-not-power"),
        pytest.param("$scrypt$n=16384,r=8,p=1$not base64$a2V5", "malformed", id="salt"),
        pytest.param("$scrypt$n=16384,r=8$c2FsdA==$a2V5", "malformed", id="no-p"),
        pytest.param("$scrypt$n=16384,r=8,p=1$$a2V5", "empty", id="empty-salt"),
        pytest.param("$2b$12$abcdefghijklmnopqrstuv", "not a $scrypt$", id="bcrypt"),
        pytest.param("plain", "not a $scrypt$", id="plain"),
    ],
)
def test_a_bad_hash_is_refused_with_why(no_scrypt: None, text: str, says: str) -> None:
    with pytest.raises(InvalidDevice, match="password hash") as refused:
        check_password_hash(text)
    assert says in str(refused.value)


def test_a_stored_hash_scrypt_refuses_is_a_refusal_not_an_error() -> None:
    """A hash stored before it was checked this way (or by an older node): no way in."""
    assert verify_chosen_password(b"anything", TOO_BIG) is False
    assert verify_chosen_password(b"anything", "plain") is False


def test_a_device_retrying_with_an_uncheckable_hash_is_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Stored before hashes were read; a salt of its own: the throttle is per hash.
    stored = f"$scrypt$n=16384,r=8,p=1$not base64 {secrets.token_hex(4)}$a2V5"
    with caplog.at_level("WARNING", logger="headwater.devices.credentials"):
        for _ in range(20):  # a device retrying its CONNECT
            assert verify_chosen_password(b"anything", stored) is False
    lines = [r for r in caplog.records if "cannot be checked" in r.getMessage()]
    assert len(lines) == 1
