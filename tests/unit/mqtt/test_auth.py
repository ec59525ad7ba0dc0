"""Password file (scrypt) and ACL rules."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from headwater.mqtt.auth import (
    Access,
    Acl,
    AclRule,
    AuthError,
    PasswordFile,
    hash_password,
    verify_password,
)


def test_hash_is_salted_and_verifies() -> None:
    a, b = hash_password("s3cret"), hash_password("s3cret")
    assert a != b  # fresh salt each time
    assert a.startswith("$scrypt$n=16384,r=8,p=1$")
    assert verify_password("s3cret", a)
    assert not verify_password("s3cret!", a)
    assert not verify_password("", a)


@pytest.mark.parametrize(
    "bad",
    [
        "plain",
        "$scrypt$n=16384,r=8$AAAA$AAAA",
        "$scrypt$n=1000,r=8,p=1$AAAA$AAAA",  # n not a power of two
        "$scrypt$n=2147483648,r=8,p=1$AAAA$AAAA",  # cost ceiling
        "$scrypt$n=16384,r=8,p=1$!!$AAAA",
        "$bcrypt$n=16384,r=8,p=1$AAAA$AAAA",
        "$scrypt$n=65536,r=8,p=1$AAAA$AAAA",  # over the memory scrypt is given
    ],
)
def test_malformed_hashes_are_rejected(bad: str) -> None:
    with pytest.raises(AuthError):
        verify_password("x", bad)


def test_password_file_round_trip(tmp_path: Path) -> None:
    pw = PasswordFile()
    pw.add_user("alice", "wonderland")
    pw.add_user("bob", "builder")
    assert pw.verify("alice", b"wonderland")
    assert not pw.verify("alice", b"builder")
    assert not pw.verify("carol", b"wonderland")  # unknown user
    assert not pw.verify("alice", None)
    path = tmp_path / "passwd"
    pw.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "wonderland" not in path.read_text()
    loaded = PasswordFile.load(path)
    assert len(loaded) == 2
    assert loaded.verify("bob", b"builder")
    assert loaded.remove_user("bob")
    assert "bob" not in loaded


def test_a_password_file_line_too_costly_to_check_is_refused_with_its_line(
    tmp_path: Path,
) -> None:
    """OpenSSL would refuse it at every CONNECT (a ValueError in the checking thread)."""
    path = tmp_path / "passwd"
    path.write_text(f"alice:{hash_password('x')}\nbob:$scrypt$n=1048576,r=8,p=1$AAAA$AAAA\n")
    with pytest.raises(AuthError, match=r"passwd:2: scrypt n=1048576,r=8,p=1 needs .* memory"):
        PasswordFile.load(path)


def test_password_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text(f"# comment\n\nalice:{hash_password('x')}\nbroken line\n")
    with pytest.raises(AuthError, match=r"passwd:4"):
        PasswordFile.load(path)
    with pytest.raises(AuthError):
        PasswordFile().add_user("a:b", "x")


def test_acl_client_pattern_limits_publish_to_own_subtree() -> None:
    acl = Acl([AclRule("devices/%c/#", Access.WRITE)])
    assert acl.can_publish(None, "dev1", "devices/dev1/temp")
    assert acl.can_publish(None, "dev1", "devices/dev1")
    assert not acl.can_publish(None, "dev1", "devices/dev2/temp")
    # A client id with wildcards or '/' cannot widen its own rule.
    assert not acl.can_publish(None, "#", "devices/x/temp")
    assert not acl.can_publish(None, "a/b", "devices/a/b/temp")
    # WRITE does not grant READ.
    assert not acl.can_subscribe(None, "dev1", "devices/dev1/#")


def test_acl_user_pattern_and_anonymous() -> None:
    acl = Acl([AclRule("users/%u/#", Access.READWRITE)])
    assert acl.can_subscribe("ann", "c", "users/ann/#")
    assert acl.can_subscribe("ann", "c", "users/ann/+/x")
    assert not acl.can_subscribe("ann", "c", "users/#")
    assert not acl.can_subscribe("ann", "c", "users/+/x")
    assert not acl.can_publish(None, "c", "users//x")  # anonymous never matches %u


def test_acl_deny_wins_even_when_only_overlapping() -> None:
    acl = Acl(
        [
            AclRule("#", Access.READWRITE),
            AclRule("secrets/#", Access.READWRITE, allow=False),
        ]
    )
    assert acl.can_publish("u", "c", "public/x")
    assert not acl.can_publish("u", "c", "secrets/x")
    assert acl.can_subscribe("u", "c", "public/#")
    assert not acl.can_subscribe("u", "c", "secrets/+")
    assert not acl.can_subscribe("u", "c", "#")  # would include secrets/...
    assert not acl.can_subscribe("u", "c", "+/x")
    assert acl.can_subscribe("u", "c", "other/+")


def test_acl_parse_mosquitto_style() -> None:
    acl = Acl.parse(
        """
        # everyone
        pattern write devices/%c/#
        topic read public/#
        user dashboard
        topic read devices/#
        topic deny devices/+/secrets/#
        client ops-1
        topic readwrite ops/#
        """
    )
    assert acl.can_publish("x", "dev9", "devices/dev9/t")
    assert acl.can_subscribe("anyone", "c", "public/news")
    assert acl.can_subscribe("dashboard", "c", "devices/#") is False  # deny overlaps
    assert acl.can_subscribe("dashboard", "c", "devices/+/temp")
    assert not acl.can_subscribe("dashboard", "c", "devices/a/secrets/k")
    assert not acl.can_subscribe("other", "c", "devices/+/temp")
    assert acl.can_publish(None, "ops-1", "ops/restart")
    assert not acl.can_publish(None, "ops-2", "ops/restart")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("topic", id="missing-pattern"),
        pytest.param("bogus x", id="unknown-keyword"),
        pytest.param("topic read a/#/b", id="invalid-filter"),
    ],
)
def test_acl_parse_errors(text: str) -> None:
    with pytest.raises(AuthError, match=r"<acl>:1"):
        Acl.parse(text)


def test_empty_acl_denies_everything() -> None:
    acl = Acl()
    assert not acl.can_publish("u", "c", "a")
    assert not acl.can_subscribe("u", "c", "a")
