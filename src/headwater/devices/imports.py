"""Bulk import of devices from CSV or JSON: parsed and checked whole before anything is written.

How this works: :func:`parse_rows` turns a file into rows of ``id``,
``labels``, ``enabled`` and ``credentials`` (as the API's create takes them),
and checks every row (ids, labels, credential fields, duplicates within the
file) before one device is registered: a file with problems is refused with
each problem and its row, and nothing is imported.

CSV has a header row; the columns (any order, only ``id`` required):

=====================  ===============================================================
``id``                 the device id
``labels``             ``name=value`` pairs separated by ``;`` (``site=a;tier=prod``)
``enabled``            ``true`` (default) or ``false``
``password_hash``      a ``$scrypt$`` hash (as in a password file)
``password``           a password in clear (hashed with scrypt on import: slow, about
                       50 ms a device; prefer generated secrets or hashes for fleets)
``x509_fingerprint``   a client certificate's SHA-256 fingerprint
``x509_subject``       a client certificate's subject DN
=====================  ===============================================================

A row without any credential gets a generated secret; the secrets are in the
answer, once. JSON is ``{"devices": [...]}`` (or a bare list) of objects as
``POST /api/v1/devices`` takes them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any, Final

import orjson

from headwater.devices.credentials import check_password_hash, x509_credential
from headwater.devices.model import (
    MAX_CREDENTIALS,
    InvalidDevice,
    check_device_id,
    check_labels,
)

__all__ = ["CSV_COLUMNS", "MAX_IMPORT_ROWS", "ImportProblems", "parse_rows"]

MAX_IMPORT_ROWS: Final = 100_000
"""Devices in one import at most (a gateway's fleet is far smaller; a bigger
file is split, so that one request stays a bounded amount of work)."""

MAX_PROBLEMS_SHOWN: Final = 20

CSV_COLUMNS: Final = (
    "id",
    "labels",
    "enabled",
    "password_hash",
    "password",
    "x509_fingerprint",
    "x509_subject",
)


class ImportProblems(InvalidDevice):
    """The file has problems; nothing was imported."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        text = "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
        super().__init__(f"nothing imported, {len(problems)} problem(s): {text}")


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("", "true", "yes", "1"):
        return True
    if value in ("false", "no", "0"):
        return False
    raise InvalidDevice(f"enabled is true or false, not {text!r}")


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise InvalidDevice(f"label {part.strip()!r} is not name=value")
        labels[name.strip()] = value.strip()
    return labels


def _csv_rows(text: str) -> list[tuple[str, dict[str, Any]]]:
    # newline="": the csv module reads line ends itself (a CR inside a quoted
    # field, or a lone CR, is no error then).
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        return _read_csv(reader)
    except csv.Error as exc:  # a field over the csv module's limit, a stray NUL...
        raise ImportProblems([f"line {reader.line_num}: not CSV: {exc}"]) from None


def _read_csv(reader: csv.DictReader[str]) -> list[tuple[str, dict[str, Any]]]:
    if reader.fieldnames is None:
        raise ImportProblems(["the CSV file is empty"])
    columns = [c.strip() for c in reader.fieldnames]
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    if unknown or "id" not in columns:
        raise ImportProblems(
            [
                f"CSV columns are {', '.join(CSV_COLUMNS)} (`id` required); "
                f"not {', '.join(unknown) or 'without id'}"
            ]
        )
    out: list[tuple[str, dict[str, Any]]] = []
    for number, raw in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"row {number}"
        if None in raw:
            out.append((where, {"error": "more fields than the header has"}))
            continue
        try:
            credentials: list[dict[str, Any]] = []
            if row.get("password_hash"):
                credentials.append({"type": "password", "hash": row["password_hash"]})
            if row.get("password"):
                credentials.append({"type": "password", "password": row["password"]})
            if row.get("x509_fingerprint") or row.get("x509_subject"):
                cert: dict[str, Any] = {"type": "x509"}
                if row.get("x509_fingerprint"):
                    cert["fingerprint"] = row["x509_fingerprint"]
                if row.get("x509_subject"):
                    cert["subject"] = row["x509_subject"]
                credentials.append(cert)
            out.append(
                (
                    where,
                    {
                        "id": row.get("id", ""),
                        "labels": _labels(row.get("labels", "")),
                        "enabled": _bool(row.get("enabled", "")),
                        "credentials": credentials or None,
                    },
                )
            )
        except InvalidDevice as exc:
            out.append((where, {"error": str(exc)}))
    return out


def _json_rows(text: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ImportProblems([f"not JSON: {exc}"]) from exc
    items = doc.get("devices") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise ImportProblems(['JSON imports are {"devices": [...]} or a list of devices'])
    out: list[tuple[str, dict[str, Any]]] = []
    for index, item in enumerate(items):
        where = f"device {index}"
        if not isinstance(item, dict):
            out.append((where, {"error": "a device is an object"}))
            continue
        unknown = set(item) - {"id", "labels", "enabled", "credentials"}
        if unknown:
            out.append((where, {"error": f"unknown field(s) {', '.join(sorted(unknown))}"}))
            continue
        out.append((where, dict(item)))
    return out


def _check_credential(spec: Any) -> tuple[str, ...]:
    """Check one credential as the registry will; the certificate it names, if any: its
    fingerprint and/or subject, given or read from its PEM ``certificate``, normalised.

    A password hash is read, not computed (no scrypt on the event loop, whatever
    the number of rows); a password in clear is hashed by the registry, in a
    worker thread.
    """
    if not isinstance(spec, Mapping):
        raise InvalidDevice("a credential is an object with a `type`")
    kind = spec.get("type")
    if kind == "password":
        if spec.get("hash") is not None:
            check_password_hash(str(spec["hash"]))
        elif not isinstance(spec.get("password"), str):
            raise InvalidDevice("a password credential needs `password` or `hash`")
    elif kind == "x509":
        credential = x509_credential(spec, "", 0.0)
        return tuple(v for v in (credential.fingerprint, credential.subject) if v is not None)
    elif kind != "secret":
        raise InvalidDevice(
            f"credential type {str(kind)[:40]!r} is not one of secret, password, x509"
        )
    return ()


def parse_rows(text: str, media: str) -> list[dict[str, Any]]:
    """Rows to import from a CSV (``media`` ``csv``) or JSON file, all checked (see above)."""
    found = _csv_rows(text) if media == "csv" else _json_rows(text)
    if len(found) > MAX_IMPORT_ROWS:
        raise ImportProblems(
            [f"{len(found)} devices: at most {MAX_IMPORT_ROWS} in one import (split the file)"]
        )
    problems: list[str] = []
    seen: dict[str, str] = {}
    certificates: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    for where, row in found:
        if "error" in row:
            problems.append(f"{where}: {row['error']}")
            continue
        try:
            device_id = check_device_id(row.get("id"))
            labels = check_labels(row.get("labels"))
            enabled = row.get("enabled", True)
            if not isinstance(enabled, bool):
                raise InvalidDevice("`enabled` is true or false")
            credentials = row.get("credentials")
            if credentials is not None:
                if not isinstance(credentials, list) or len(credentials) > MAX_CREDENTIALS:
                    raise InvalidDevice(f"`credentials` is a list of at most {MAX_CREDENTIALS}")
                for spec in credentials:
                    for value in _check_credential(spec):
                        other = certificates.setdefault(value, device_id)
                        if other != device_id:
                            raise InvalidDevice(f"certificate {value[:40]} is also {other}'s")
        except InvalidDevice as exc:
            problems.append(f"{where}: {exc}")
            continue
        if device_id in seen:
            problems.append(
                f"{where}: device {device_id!r} appears twice (first at {seen[device_id]})"
            )
            continue
        seen[device_id] = where
        rows.append(
            {"id": device_id, "labels": labels, "enabled": enabled, "credentials": credentials}
        )
    if problems:
        raise ImportProblems(problems)
    return rows
