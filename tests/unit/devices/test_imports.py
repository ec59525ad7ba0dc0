"""Import files: every row checked before anything is written, without running scrypt."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from headwater.devices.imports import ImportProblems, parse_rows
from headwater.mqtt.auth import hash_password
from tests.certs import device_certificate as certificate
from tests.unit.devices.conftest import TOO_BIG


def as_json(*devices: dict[str, Any]) -> str:
    return orjson.dumps({"devices": list(devices)}).decode()


def test_many_hashes_are_read_without_running_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed = hash_password("correct horse")

    def scrypt(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("scrypt ran on the event loop")

    monkeypatch.setattr(hashlib, "scrypt", scrypt)
    text = "id,password_hash\n" + "".join(f'd{n},"{hashed}"\n' for n in range(1000))
    rows = parse_rows(text, "csv")
    assert len(rows) == 1000
    assert rows[0]["credentials"] == [{"type": "password", "hash": hashed}]


@pytest.mark.parametrize(
    ("text", "media"),
    [
        pytest.param(f'id,password_hash\nok,\nd1,"{TOO_BIG}"\n', "csv", id="csv"),
        pytest.param(
            as_json(
                {"id": "ok"},
                {"id": "d1", "credentials": [{"type": "password", "hash": TOO_BIG}]},
            ),
            "json",
            id="json",
        ),
    ],
)
def test_a_hash_too_costly_to_check_is_a_problem_of_its_row(text: str, media: str) -> None:
    with pytest.raises(ImportProblems) as refused:
        parse_rows(text, media)
    assert any(
        problem.startswith(("row 3:", "device 1:")) and "memory" in problem
        for problem in refused.value.problems
    ), refused.value.problems


def test_the_same_certificate_twice_as_pem_is_a_problem() -> None:
    pem, _ = certificate("dev")
    text = as_json(
        {"id": "a", "credentials": [{"type": "x509", "certificate": pem}]},
        {"id": "b", "credentials": [{"type": "x509", "certificate": pem}]},
    )
    with pytest.raises(ImportProblems, match=r"device 1: certificate .* is also a's"):
        parse_rows(text, "json")


@pytest.mark.parametrize(
    "other",
    [
        pytest.param("fingerprint", id="fingerprint"),
        pytest.param("subject", id="subject"),
    ],
)
def test_a_pem_and_the_fingerprint_or_subject_it_has_are_the_same_certificate(
    other: str,
) -> None:
    pem, fingerprint = certificate("dev")
    value = fingerprint.upper() if other == "fingerprint" else "CN=dev"
    text = as_json(
        {"id": "a", "credentials": [{"type": "x509", other: value}]},
        {"id": "b", "credentials": [{"type": "x509", "certificate": pem}]},
    )
    with pytest.raises(ImportProblems, match="is also a's"):
        parse_rows(text, "json")


def test_a_pem_is_read_before_anything_is_imported() -> None:
    pem, _ = certificate("dev")
    rows = parse_rows(
        as_json({"id": "a", "credentials": [{"type": "x509", "certificate": pem}]}), "json"
    )
    assert rows[0]["credentials"] == [{"type": "x509", "certificate": pem}]
    with pytest.raises(ImportProblems, match="device 0: `certificate` is not a PEM"):
        parse_rows(
            as_json({"id": "a", "credentials": [{"type": "x509", "certificate": "-----"}]}),
            "json",
        )
    # Two different certificates are no problem.
    other, _ = certificate("other")
    parse_rows(
        as_json(
            {"id": "a", "credentials": [{"type": "x509", "certificate": pem}]},
            {"id": "b", "credentials": [{"type": "x509", "certificate": other}]},
        ),
        "json",
    )
