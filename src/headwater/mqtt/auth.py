"""Authentication (password file, scrypt) and authorisation (ACL rules).

How this works:

* :class:`PasswordFile` keeps ``username -> scrypt hash`` and reads/writes a
  Mosquitto-style text file (``username:hash`` per line).  Hashes are
  self-describing (``$scrypt$n=..,r=..,p=..$salt$key``, salt and key in
  base64) so the cost can be raised later without invalidating old entries.
  Verification always performs one scrypt computation, also for an unknown
  user, and compares with :func:`hmac.compare_digest`, so neither timing nor
  the answer tells which usernames exist.  scrypt is deliberately slow
  (~50 ms): the broker runs :meth:`PasswordFile.verify` in a worker thread.
* :class:`Acl` holds allow/deny rules for ``read`` (subscribe) and ``write``
  (publish), either for everyone or for one username or client id.  Rule
  patterns are topic filters in which ``%u`` and ``%c`` stand for the
  username and client id (``devices/%c/#``).  Deny rules win over allow
  rules; with at least one rule configured, anything not allowed is denied.
  A subscription is allowed only if the rule's pattern *covers* the whole
  filter (see :func:`~headwater.mqtt.topics.filter_covers`).

No I/O besides the explicit ``load``/``save`` of files; no asyncio.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import os
import secrets
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from headwater.mqtt.topics import InvalidTopic, filter_covers, topic_matches, validate_topic_filter

__all__ = [
    "Access",
    "Acl",
    "AclRule",
    "AuthError",
    "PasswordFile",
    "check_hash",
    "hash_password",
    "verify_password",
]

#: scrypt cost parameters (RFC 7914).  n=2**14, r=8 needs 16 MiB and ~50 ms per
#: hash on a small ARM gateway's faster cousins: expensive for an attacker with
#: a stolen file, cheap enough for CONNECT (done in a thread, once per connection).
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_KEY_BYTES = 32
SCRYPT_SALT_BYTES = 16
#: OpenSSL refuses scrypt parameters needing more memory than this (default 32 MiB).
_SCRYPT_MAXMEM = 64 * 1024 * 1024
#: Ceiling on the cost accepted from a stored hash, so a tampered file cannot make
#: the broker spend seconds (or gigabytes) per CONNECT.
_SCRYPT_MAX_N = 2**20


class AuthError(ValueError):
    """A malformed password file, hash or ACL file."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """Return a self-describing scrypt hash of ``password`` with a fresh salt."""
    salt = secrets.token_bytes(SCRYPT_SALT_BYTES)
    key = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=_SCRYPT_MAXMEM,
        dklen=SCRYPT_KEY_BYTES,
    )
    return f"$scrypt$n={n},r={r},p={p}${_b64(salt)}${_b64(key)}"


@dataclass(frozen=True, slots=True)
class _Hash:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    @classmethod
    def parse(cls, text: str) -> _Hash:
        parts = text.split("$")
        if len(parts) != 5 or parts[0] or parts[1] != "scrypt":
            raise AuthError("not a $scrypt$ hash")
        try:
            params = dict(item.split("=", 1) for item in parts[2].split(","))
            n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
            salt = base64.b64decode(parts[3], validate=True)
            key = base64.b64decode(parts[4], validate=True)
        except (ValueError, KeyError) as exc:
            raise AuthError(f"malformed scrypt hash: {exc}") from exc
        if not (1 < n <= _SCRYPT_MAX_N and n & (n - 1) == 0 and 0 < r <= 32 and 0 < p <= 16):
            raise AuthError("scrypt parameters out of range")
        # What OpenSSL counts against maxmem: B (128 r p) and V with its scratch (128 r (n+2)).
        memory = 128 * r * (n + p + 2)
        if memory > _SCRYPT_MAXMEM:
            raise AuthError(
                f"scrypt n={n},r={r},p={p} needs {memory / 2**20:.1f} MiB of memory for each "
                f"check, more than the {_SCRYPT_MAXMEM // 2**20} MiB allowed (n=16384,r=8,"
                "p=1 needs 16 MiB)"
            )
        if not salt or not key:
            raise AuthError("empty salt or key")
        return cls(n, r, p, salt, key)

    def check(self, password: bytes) -> bool:
        key = hashlib.scrypt(
            password,
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=_SCRYPT_MAXMEM,
            dklen=len(self.key),
        )
        return hmac.compare_digest(key, self.key)


def check_hash(hashed: str) -> None:
    """Read a hash as :func:`verify_password` would, computing nothing: its form, its
    base64, and parameters the checker takes (memory included). Raises AuthError."""
    _Hash.parse(hashed)


def verify_password(password: str | bytes, hashed: str) -> bool:
    """Check a password against a hash from :func:`hash_password`."""
    raw = password.encode("utf-8") if isinstance(password, str) else password
    return _Hash.parse(hashed).check(raw)


# A hash of a random password, checked against for unknown users so that the
# time taken does not reveal whether a username exists.
_DUMMY = _Hash.parse(hash_password(secrets.token_hex(16)))


class PasswordFile:
    """Usernames and scrypt hashes; the API the CLI and tests use to add users."""

    __slots__ = ("_hashes",)

    def __init__(self, entries: Iterable[tuple[str, str]] = ()) -> None:
        self._hashes: dict[str, _Hash] = {}
        for username, hashed in entries:
            self._hashes[username] = _Hash.parse(hashed)

    def __contains__(self, username: object) -> bool:
        return username in self._hashes

    def __len__(self) -> int:
        return len(self._hashes)

    def add_user(self, username: str, password: str) -> None:
        """Add or replace a user (the password is hashed at once)."""
        if not username or ":" in username or "\n" in username:
            raise AuthError("usernames must be non-empty and contain no ':' or newline")
        self._hashes[username] = _Hash.parse(hash_password(password))

    def remove_user(self, username: str) -> bool:
        return self._hashes.pop(username, None) is not None

    def verify(self, username: str, password: bytes | None) -> bool:
        """True if ``username`` exists and ``password`` is its password.

        Always costs one scrypt computation and a constant-time compare.
        """
        entry = self._hashes.get(username)
        ok = (entry or _DUMMY).check(password or b"")
        return ok and entry is not None and password is not None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PasswordFile:
        """Read ``username:hash`` lines; blank lines and ``#`` comments are ignored."""
        entries: list[tuple[str, str]] = []
        text = Path(path).read_text(encoding="utf-8")
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            username, sep, hashed = line.partition(":")
            if not sep or not username:
                raise AuthError(f"{path}:{lineno}: expected username:hash")
            try:
                _Hash.parse(hashed)
            except AuthError as exc:
                raise AuthError(f"{path}:{lineno}: {exc}") from exc
            entries.append((username, hashed))
        return cls(entries)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the file atomically (temp file + rename), readable by the owner only."""
        target = Path(path)
        lines = [
            f"{user}:$scrypt$n={h.n},r={h.r},p={h.p}${_b64(h.salt)}${_b64(h.key)}\n"
            for user, h in sorted(self._hashes.items())
        ]
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.writelines(lines)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class Access(enum.Flag):
    READ = enum.auto()  # subscribe / receive
    WRITE = enum.auto()  # publish
    READWRITE = READ | WRITE


_ACCESS_WORDS = {
    "read": Access.READ,
    "write": Access.WRITE,
    "readwrite": Access.READWRITE,
}


@dataclass(frozen=True, slots=True)
class AclRule:
    """One rule: ``pattern`` may contain ``%u``/``%c``; ``user``/``client_id`` restrict it."""

    pattern: str
    access: Access = Access.READWRITE
    allow: bool = True
    user: str | None = None
    client_id: str | None = None

    def __post_init__(self) -> None:
        probe = self.pattern.replace("%u", "u").replace("%c", "c")
        try:
            validate_topic_filter(probe)
        except InvalidTopic as exc:
            raise AuthError(f"bad ACL pattern {self.pattern!r}: {exc}") from exc

    def applies(self, username: str | None, client_id: str) -> bool:
        if self.user is not None and self.user != username:
            return False
        return self.client_id is None or self.client_id == client_id

    def expand(self, username: str | None, client_id: str) -> str | None:
        """The pattern with ``%u``/``%c`` substituted, or ``None`` if it cannot apply.

        A username or client id containing ``/``, ``+`` or ``#`` would let a
        client widen its own rule (``%c`` = ``#``), so such a value never
        matches a substituted pattern (and an anonymous client never matches ``%u``).
        """
        pattern = self.pattern
        if "%u" in pattern:
            if not username or _unsafe(username):
                return None
            pattern = pattern.replace("%u", username)
        if "%c" in pattern:
            if not client_id or _unsafe(client_id):
                return None
            pattern = pattern.replace("%c", client_id)
        return pattern


def _unsafe(value: str) -> bool:
    return "/" in value or "+" in value or "#" in value


class Acl:
    """Allow/deny rules evaluated per PUBLISH (topic) and per SUBSCRIBE (filter)."""

    __slots__ = ("_rules",)

    def __init__(self, rules: Iterable[AclRule] = ()) -> None:
        self._rules: list[AclRule] = list(rules)

    def add(self, rule: AclRule) -> None:
        self._rules.append(rule)

    @property
    def rules(self) -> tuple[AclRule, ...]:
        return tuple(self._rules)

    def _decide(
        self, access: Access, username: str | None, client_id: str, test: Callable[[str], bool]
    ) -> bool:
        allowed = False
        for rule in self._rules:
            if not (rule.access & access) or not rule.applies(username, client_id):
                continue
            pattern = rule.expand(username, client_id)
            if pattern is None or not test(pattern):
                continue
            if not rule.allow:
                return False  # deny wins
            allowed = True
        return allowed

    def can_publish(self, username: str | None, client_id: str, topic: str) -> bool:
        return self._decide(
            Access.WRITE, username, client_id, lambda pattern: topic_matches(pattern, topic)
        )

    def can_read(self, username: str | None, client_id: str, topic: str) -> bool:
        """Whether a message on ``topic`` may be delivered to this client."""
        return self._decide(
            Access.READ, username, client_id, lambda pattern: topic_matches(pattern, topic)
        )

    def can_subscribe(self, username: str | None, client_id: str, topic_filter: str) -> bool:
        def test(pattern: str) -> bool:
            return filter_covers(pattern, topic_filter)

        allowed = self._decide(Access.READ, username, client_id, test)
        if not allowed:
            return False
        # A deny rule that merely overlaps the filter (not covering it) must still
        # win: 'deny secrets/#' forbids subscribing to '#'.
        for rule in self._rules:
            if rule.allow or not (rule.access & Access.READ):
                continue
            if not rule.applies(username, client_id):
                continue
            pattern = rule.expand(username, client_id)
            if pattern is not None and _overlaps(pattern, topic_filter):
                return False
        return True

    @classmethod
    def parse(cls, text: str, source: str = "<acl>") -> Acl:
        """Parse a Mosquitto-style ACL file.

        ``user NAME`` / ``client NAME`` start a section whose ``topic`` lines apply
        to that user or client id; lines before any section apply to everyone;
        ``pattern`` lines always apply to everyone.  Access words: ``read``,
        ``write``, ``readwrite`` (default) or ``deny``::

            pattern write devices/%c/#
            user dashboard
            topic read devices/#
            topic deny devices/+/secrets/#
        """
        rules: list[AclRule] = []
        user: str | None = None
        client: str | None = None
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            word, _, rest = line.partition(" ")
            rest = rest.strip()
            try:
                if word == "user":
                    user, client = rest or None, None
                elif word == "client":
                    user, client = None, rest or None
                elif word in ("topic", "pattern"):
                    access_word, _, pattern = rest.partition(" ")
                    if access_word in _ACCESS_WORDS or access_word == "deny":
                        pattern = pattern.strip()
                    else:
                        access_word, pattern = "readwrite", rest
                    if not pattern:
                        raise AuthError("missing topic pattern")
                    scoped = word == "topic"
                    rules.append(
                        AclRule(
                            pattern=pattern,
                            access=_ACCESS_WORDS.get(access_word, Access.READWRITE),
                            allow=access_word != "deny",
                            user=user if scoped else None,
                            client_id=client if scoped else None,
                        )
                    )
                else:
                    raise AuthError(f"unknown keyword {word!r}")
            except AuthError as exc:
                raise AuthError(f"{source}:{lineno}: {exc}") from exc
        return cls(rules)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Acl:
        return cls.parse(Path(path).read_text(encoding="utf-8"), str(path))


def _overlaps(a: str, b: str) -> bool:
    """Whether some topic name is matched by both filters."""
    if (a.startswith("$") and b[:1] in ("+", "#")) or (b.startswith("$") and a[:1] in ("+", "#")):
        return False
    a_levels, b_levels = a.split("/"), b.split("/")
    for i in range(max(len(a_levels), len(b_levels))):
        x = a_levels[i] if i < len(a_levels) else None
        y = b_levels[i] if i < len(b_levels) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            # One filter ended and the other needs another level that is not '#'.
            return False
        if x != "+" and y != "+" and x != y:
            return False
    return True
