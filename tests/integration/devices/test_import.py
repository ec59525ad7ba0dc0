"""Bulk import: 10,000 devices from CSV, every secret shown once; bad files import nothing."""

from __future__ import annotations

import pytest

from tests.integration.devices.conftest import Node
from tests.integration.devices.test_password_hashes import TOO_BIG
from tests.integration.devices.test_registry_auth import connect

pytestmark = pytest.mark.integration


def test_ten_thousand_devices_from_csv(node: Node) -> None:
    rows = ["id,labels"] + [f"gw-{n:05d},site=s{n % 7};fleet=a" for n in range(10_000)]
    answer = node.ok(
        "POST", "/api/v1/devices/import", raw="\n".join(rows).encode(), content_type="text/csv"
    )
    assert answer["created"] == 10_000 and answer["existing"] == [] and answer["failed"] == []
    secrets = {s["device"]: s["secret"] for s in answer["secrets"]}
    assert len(secrets) == 10_000 and len(set(secrets.values())) == 10_000
    listed = node.ok("GET", "/api/v1/devices?selector=site=s3&limit=10000")
    assert listed["total"] == len([n for n in range(10_000) if n % 7 == 3])
    # Any of them connects with its secret.
    assert connect(node, "gw-04242", secrets["gw-04242"]).connack()[0] == 0
    # Importing again creates nothing and shows no secret.
    again = node.ok(
        "POST", "/api/v1/devices/import", raw="\n".join(rows[:3]).encode(), content_type="text/csv"
    )
    assert again == {
        "created": 0,
        "existing": ["gw-00000", "gw-00001"],
        "failed": [],
        "secrets": [],
    }


def test_json_import_with_every_kind_of_credential(node: Node) -> None:
    body = {
        "devices": [
            {"id": "a", "labels": {"x": "1"}},
            {"id": "b", "credentials": [{"type": "password", "password": "long enough"}]},
            {"id": "c", "credentials": [{"type": "x509", "subject": "CN=c, O=Acme"}]},
            {"id": "d", "enabled": False},
        ]
    }
    answer = node.ok("POST", "/api/v1/devices/import", body)
    assert answer["created"] == 4 and [s["device"] for s in answer["secrets"]] == ["a", "d"]
    c = node.ok("GET", "/api/v1/devices/c")
    assert c["credentials"][0]["subject"] == "CN=c,O=Acme"
    assert connect(node, "b", "long enough").connack()[0] == 0


@pytest.mark.parametrize(
    ("text", "media", "says"),
    [
        pytest.param("id\nok-1\nbad/id\n", "text/csv", "row 3: device id 'bad/id'", id="bad-id"),
        pytest.param("id\na\na\n", "text/csv", "row 3: device 'a' appears twice", id="twice"),
        pytest.param("name\na\n", "text/csv", "CSV columns are", id="no-id-column"),
        pytest.param("id,labels\na,site\n", "text/csv", "not name=value", id="label"),
        pytest.param("id,enabled\na,maybe\n", "text/csv", "true or false", id="enabled"),
        pytest.param("id,password_hash\na,plain\n", "text/csv", "scrypt", id="hash"),
        # scrypt could not check it (more memory than it is given): a 500 before.
        pytest.param(
            f'id,password_hash\na,\nb,"{TOO_BIG}"\n',
            "text/csv",
            "row 3: password hash: scrypt n=65536,r=8,p=1 needs 64.0 MiB of memory",
            id="hash-too-costly",
        ),
        pytest.param(
            '[{"id": "a"}, {"id": "b", "credentials": '
            f'[{{"type": "password", "hash": "{TOO_BIG}"}}]}}]',
            "application/json",
            "device 1: password hash: scrypt n=65536,r=8,p=1 needs 64.0 MiB of memory",
            id="hash-too-costly-json",
        ),
        pytest.param("id,x509_fingerprint\na,abc\n", "text/csv", "SHA-256", id="fingerprint"),
        pytest.param("id\na,b\n", "text/csv", "more fields", id="extra-field"),
        pytest.param("", "text/csv", "empty", id="empty"),
        # A lone CR and a form feed (what the API's fuzzing sent: a 500 before).
        pytest.param("\x0c\r\U00047d44\xa9", "text/csv", "CSV columns are", id="lone-cr"),
        pytest.param(
            'id\n"' + "a" * 140_000 + '"\n', "text/csv", "not CSV: field larger", id="huge-field"
        ),
        pytest.param(
            '{"devices": [{"id": "a", "x": 1}]}', "application/json", "unknown", id="field"
        ),
        pytest.param('{"devices": 1}', "application/json", "a list of devices", id="not-list"),
        pytest.param("{", "application/json", "not JSON", id="not-json"),
        pytest.param(
            '[{"id": "a", "credentials": [{"type": "x509", "subject": "CN=s"}]},'
            ' {"id": "b", "credentials": [{"type": "x509", "subject": "CN=s"}]}]',
            "application/json",
            "also a's",
            id="same-certificate",
        ),
    ],
)
def test_a_bad_file_imports_nothing(node: Node, text: str, media: str, says: str) -> None:
    status, answer = node.api(
        "POST", "/api/v1/devices/import", raw=text.encode(), content_type=media
    )
    assert status == 400 and says in answer["error"], answer
    assert "nothing imported" in answer["error"]
    assert node.ok("GET", "/api/v1/devices")["items"] == []


def test_an_import_reports_what_the_registry_refused(node: Node) -> None:
    node.ok(
        "POST", "/api/v1/devices", {"id": "a", "credentials": [{"type": "x509", "subject": "CN=s"}]}
    )
    body = [{"id": "b", "credentials": [{"type": "x509", "subject": "CN=s"}]}, {"id": "c"}]
    answer = node.ok("POST", "/api/v1/devices/import", body)
    assert answer["created"] == 1
    [failed] = answer["failed"]
    assert failed["device"] == "b" and "credential of device 'a'" in failed["error"]
