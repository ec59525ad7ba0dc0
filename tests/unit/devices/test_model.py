"""Names, labels, selectors and credentials: what is accepted, and what is said about the rest."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from headwater.devices.credentials import (
    SecretHasher,
    generate_secret,
    normalise_fingerprint,
    normalise_subject,
)
from headwater.devices.model import (
    InvalidDevice,
    Selector,
    check_device_id,
    check_labels,
    check_namespace,
)


@pytest.mark.parametrize(
    "value",
    ["a", "pump-1", "Pump_1.b", "x" * 128, "0", "a_"],
)
def test_good_device_ids(value: str) -> None:
    assert check_device_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("a/b", id="slash"),
        pytest.param("a+b", id="plus"),
        pytest.param("a#", id="hash"),
        pytest.param("a b", id="space"),
        pytest.param("-a", id="leading-dash"),
        pytest.param("a.", id="trailing-dot"),
        pytest.param("x" * 129, id="too-long"),
        pytest.param("pümpe", id="non-ascii"),
        pytest.param("a\n", id="newline"),
        pytest.param(7, id="not-a-string"),
    ],
)
def test_malformed_device_ids_say_what_is_allowed(value: object) -> None:
    with pytest.raises(InvalidDevice, match="one MQTT topic level"):
        check_device_id(value)


@pytest.mark.parametrize("value", ["Default", "", "a_b", "-a"])
def test_malformed_namespaces(value: str) -> None:
    with pytest.raises(InvalidDevice, match="namespace"):
        check_namespace(value)


@pytest.mark.parametrize(
    ("labels", "ok"),
    [
        pytest.param({"site": "north", "acme.io/tier": "", "a_b": "c.d-e"}, True, id="good"),
        pytest.param({"": "x"}, False, id="empty-name"),
        pytest.param({"site": "a b"}, False, id="space-in-value"),
        pytest.param({"site": "x" * 64}, False, id="long-value"),
        pytest.param({"Bad/site": "x"}, False, id="upper-prefix"),
        pytest.param({"site": 1}, False, id="not-a-string"),
        pytest.param({f"l{n}": "" for n in range(65)}, False, id="too-many"),
    ],
)
def test_labels(labels: dict[str, object], ok: bool) -> None:
    if ok:
        assert check_labels(labels) == labels
    else:
        with pytest.raises(InvalidDevice):
            check_labels(labels)


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("site=north", True),
        ("site==north", True),
        ("site!=north", False),
        ("site=south", False),
        ("tier", True),
        ("!tier", False),
        ("!missing,site=north", True),
        ("site=north, tier=", True),
        ("", True),
    ],
)
def test_label_selectors(selector: str, matches: bool) -> None:
    assert Selector.parse(selector).matches({"site": "north", "tier": ""}) is matches


def test_a_selector_term_needs_a_name() -> None:
    with pytest.raises(InvalidDevice, match="no label name"):
        Selector.parse("=x")


@pytest.mark.parametrize("key", [b"k" * 16, b"k" * 64, b"k" * 100], ids=["short", "block", "long"])
def test_the_secret_hash_is_hmac_sha256(key: bytes) -> None:
    assert SecretHasher(key).hash("s3cret") == hmac.new(key, b"s3cret", hashlib.sha256).hexdigest()


def test_secrets_are_random_and_their_hashes_keyed() -> None:
    secrets = {generate_secret() for _ in range(100)}
    assert len(secrets) == 100 and all(len(s) == 22 for s in secrets)
    one, other = SecretHasher(SecretHasher.new_key()), SecretHasher(SecretHasher.new_key())
    secret = generate_secret()
    stored = one.hash(secret)
    assert one.matches(secret.encode(), stored)
    assert not one.matches(b"guess", stored)
    assert not other.matches(secret.encode(), stored)  # another registry's key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("AB:" * 31 + "AB", "ab" * 32),
        ("sha256:" + "0f" * 32, "0f" * 32),
        ("SHA256 Fingerprint=" + "0F:" * 31 + "0F", "0f" * 32),
        ("  " + "1" * 64 + " ", "1" * 64),
    ],
)
def test_fingerprints_are_normalised(text: str, expected: str) -> None:
    assert normalise_fingerprint(text) == expected


@pytest.mark.parametrize("text", ["ab" * 20, "zz" * 32, ""])
def test_bad_fingerprints(text: str) -> None:
    with pytest.raises(InvalidDevice, match="SHA-256"):
        normalise_fingerprint(text)


def test_subjects_are_compared_as_rfc4514() -> None:
    assert normalise_subject("CN=a, O=Acme\\, Inc.") == "CN=a,O=Acme\\, Inc."
    with pytest.raises(InvalidDevice):
        normalise_subject("just text")
