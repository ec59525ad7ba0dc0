"""Load resources from multi-document YAML, reporting every problem with file and line.

How this works: ruamel.yaml parses each document keeping line numbers;
``${VAR}`` / ``${VAR:-default}`` are substituted in string values (after
parsing, so a secret can never break the YAML); each document is validated by
the pydantic model of its kind; every error is mapped back from its field path
to the line that holds the field. All problems of all files are collected and
raised together as one :class:`ConfigError`. Cross-resource references
(a Trigger's broker, a Destination's ref, a Subscription's channel) are
checked by :func:`check_references` against the whole desired state; given
``known`` (the rest of the desired state), :func:`load_paths` and
:func:`load_text` check them too, so that schema and reference problems come
in one report. A misspelt kind or a reference to a missing resource names
the closest existing one (``Triger`` -> ``Trigger``, ``defualt`` ->
``default``), and a document that failed validation still counts as present
for references, so that one mistake is reported once.

Knative fields that Headwater accepts but does not implement (a Broker's
``spec.config`` and ``broker.class`` annotation, a Destination's ``CACerts``
and ``audience``) load with a :class:`Problem` in :attr:`Loaded.warnings`
that says they are ignored and why.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import os
import re
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from headwater.resources.kinds import ADDRESSABLE_KINDS, KINDS
from headwater.resources.models import (
    BROKER_CLASS_ANNOTATION,
    DEFAULT_NAMESPACE,
    Broker,
    Destination,
    Resource,
    Subscription,
    Trigger,
)
from headwater.resources.tiers import Uplink

Key = tuple[str, str, str]

_ENV = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration, located as precisely as known."""

    file: str
    line: int | None
    message: str
    kind: str | None = None
    name: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        parts = [where]
        if self.kind:
            parts.append(f"{self.kind} {self.name}" if self.name else self.kind)
        if self.field:
            parts.append(self.field)
        return ": ".join([*parts, self.message])


class ConfigError(ValueError):
    """The configuration has problems; ``problems`` lists all of them."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True, slots=True)
class Loaded:
    """A validated resource and where it came from.

    ``document`` is the resource as written, before ``${VAR}`` substitution
    (what is kept when it is applied through the API, so that a secret from
    the environment is never stored); ``warnings`` the fields it has that are
    ignored.
    """

    resource: Resource
    file: str
    line: int
    document: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False, repr=False)
    warnings: tuple[Problem, ...] = dataclasses.field(default=(), compare=False)


@dataclass
class LoadResult:
    """Everything one load found: the valid resources and every problem.

    ``invalid`` holds the keys of documents that named a kind and a name but
    failed validation: they count as present when references are checked.
    """

    loaded: list[Loaded] = dataclasses.field(default_factory=list)
    problems: list[Problem] = dataclasses.field(default_factory=list)
    invalid: set[Key] = dataclasses.field(default_factory=set)

    def check_references(self, known: Iterable[Loaded]) -> None:
        """Add the reference problems of :attr:`loaded` among themselves and ``known``."""
        self.problems += reference_problems([*self.loaded, *known], present=self.invalid)

    def result(self) -> list[Loaded]:
        """The resources, or :class:`ConfigError` with every problem."""
        if self.problems:
            raise ConfigError(self.problems)
        return self.loaded


def collect_paths(paths: Iterable[str | Path]) -> LoadResult:
    """Load what can be loaded from files and directories; problems are collected."""
    found = LoadResult()
    for path in _expand(paths, found.problems):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            found.problems.append(Problem(str(path), None, f"cannot read: {exc}"))
            continue
        _load(text, str(path), found)
    _check_duplicates(found.loaded, found.problems)
    return found


def collect_text(text: str, file: str = "<input>") -> LoadResult:
    """Load what can be loaded from one YAML text; problems are collected."""
    found = LoadResult()
    _load(text, file, found)
    _check_duplicates(found.loaded, found.problems)
    return found


def load_paths(
    paths: Iterable[str | Path], *, known: Iterable[Loaded] | None = None
) -> list[Loaded]:
    """Load every resource in the given files and directories (``*.yaml``, ``*.yml``).

    With ``known`` (the rest of the desired state, maybe empty) references are
    checked too, in the same report.
    """
    found = collect_paths(paths)
    if known is not None:
        found.check_references(known)
    return found.result()


def load_text(
    text: str, file: str = "<input>", *, known: Iterable[Loaded] | None = None
) -> list[Loaded]:
    """Load every resource in one YAML text (``known``: as for :func:`load_paths`)."""
    found = collect_text(text, file)
    if known is not None:
        found.check_references(known)
    return found.result()


def load_document(document: Mapping[str, Any], file: str, line: int) -> Loaded:
    """Validate one resource kept as plain data (``Loaded.document``) again."""
    found = LoadResult()
    resource = _validate(document, file, line, found)
    if resource is None:
        raise ConfigError(found.problems)
    return Loaded(resource, file, line, document, _warnings(resource, file, line))


def check_references(loaded: Sequence[Loaded]) -> None:
    """Raise :class:`ConfigError` for references to resources that do not exist."""
    problems = reference_problems(loaded)
    if problems:
        raise ConfigError(problems)


def reference_problems(loaded: Sequence[Loaded], *, present: Iterable[Key] = ()) -> list[Problem]:
    """A problem for each reference to a resource that is neither loaded nor in ``present``."""
    present = {item.resource.key for item in loaded} | set(present)
    problems: list[Problem] = []

    def missing(kind: str, name: str, ns: str) -> str:
        names = [key[2] for key in present if key[0] == kind and key[1] == ns]
        return f"no {kind} {name!r} in namespace {ns!r}{_did_you_mean(name, names)}"

    for item in loaded:
        resource = item.resource
        ns = resource.namespace

        def problem(field: str, message: str, item: Loaded = item) -> None:
            r = item.resource
            problems.append(Problem(item.file, item.line, message, r.kind, r.name, field))

        if (
            isinstance(resource, Trigger | Uplink)
            and (Broker.KIND, ns, resource.spec.broker) not in present
        ):
            problem("spec.broker", missing(Broker.KIND, resource.spec.broker, ns))
        if isinstance(resource, Subscription):
            ch = resource.spec.channel
            if ch.kind not in ("Channel", "InMemoryChannel"):
                problem("spec.channel.kind", f"must be Channel or InMemoryChannel, not {ch.kind}")
            elif (ch.kind, ns, ch.name) not in present:
                problem("spec.channel", missing(ch.kind, ch.name, ns))
        for field, destination in _destinations(resource):
            ref = destination.ref
            if ref is None:
                continue
            if ref.kind not in ADDRESSABLE_KINDS:
                problem(
                    f"{field}.ref.kind",
                    f"Headwater cannot address a {ref.kind}; use one of "
                    f"{', '.join(sorted(ADDRESSABLE_KINDS))}, or a `uri`",
                )
            elif (ref.kind, ref.namespace or ns, ref.name) not in present:
                problem(f"{field}.ref", missing(ref.kind, ref.name, ref.namespace or ns))
    return problems


def _closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``word``, if one is close (case aside)."""
    by_lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    closest = _closest(word, candidates)
    return f" (did you mean `{closest}`?)" if closest else ""


def _destinations(resource: Resource) -> Iterator[tuple[str, Destination]]:
    spec = getattr(resource, "spec", None)
    if spec is None:
        return
    for field in ("subscriber", "sink", "reply"):
        value = getattr(spec, field, None)
        if isinstance(value, Destination):
            yield f"spec.{field}", value
    delivery = getattr(spec, "delivery", None)
    if delivery is not None and delivery.dead_letter_sink is not None:
        yield "spec.delivery.deadLetterSink", delivery.dead_letter_sink


def _expand(paths: Iterable[str | Path], problems: list[Problem]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in _YAML_SUFFIXES)
        elif path.exists():
            yield path
        else:
            problems.append(Problem(str(path), None, "no such file or directory"))


def _load(text: str, file: str, found: LoadResult) -> None:
    yaml = YAML(typ="rt")
    try:
        documents = list(yaml.load_all(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        found.problems.append(Problem(file, line, f"invalid YAML: {exc.problem or exc.context}"))
        return
    for doc in _documents(documents):
        line = doc.lc.line + 1 if hasattr(doc, "lc") else 1
        if not isinstance(doc, CommentedMap):
            found.problems.append(Problem(file, line, "a resource must be a YAML mapping"))
            continue
        resource = _validate(doc, file, line, found)
        if resource is not None:
            warnings = _warnings(resource, file, line)
            found.loaded.append(Loaded(resource, file, line, _plain(doc), warnings))


def _documents(documents: Iterable[Any]) -> Iterator[Any]:
    """Each resource: documents, items of a JSON/YAML array, items of a ``kind: List``."""
    for doc in documents:
        if doc is None:
            continue  # an empty document (e.g. a trailing ---)
        if isinstance(doc, CommentedSeq):
            yield from doc
        elif isinstance(doc, CommentedMap) and doc.get("kind") == "List" and "items" in doc:
            yield from doc["items"] or ()
        else:
            yield doc


def _validate(doc: Mapping[str, Any], file: str, line: int, found: LoadResult) -> Resource | None:
    problems = found.problems
    kind = doc.get("kind")
    api_version = doc.get("apiVersion")
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        meant = _closest(kind, KINDS) if isinstance(kind, str) else None
        if meant is not None and isinstance(name, str):
            # Counted as present under the kind it most likely means, so that what
            # refers to it is not reported as a second, misleading problem.
            found.invalid.add((meant, str(namespace or DEFAULT_NAMESPACE), name))
        hint = f" (did you mean `{meant}`?)" if meant else ""
        problems.append(
            Problem(
                file,
                _line_of(doc, ("kind",), line),
                f"unknown kind {kind!r}{hint}; Headwater knows {', '.join(sorted(KINDS))}",
                field="kind",
            )
        )
        return None
    if isinstance(name, str):
        found.invalid.add((cls.KIND, str(namespace or DEFAULT_NAMESPACE), name))
    if api_version not in cls.API_VERSIONS:
        problems.append(
            Problem(
                file,
                _line_of(doc, ("apiVersion",), line),
                f"{kind} has apiVersion {' or '.join(cls.API_VERSIONS)}, not {api_version!r}",
                kind,
                name,
                "apiVersion",
            )
        )
        return None
    env_problems: list[tuple[tuple[str | int, ...], str]] = []
    data = _substitute(doc, (), env_problems)
    for path, message in env_problems:
        problems.append(
            Problem(file, _line_of(doc, path, line), message, kind, name, _dotted(path))
        )
    if env_problems:
        return None
    try:
        resource = cls.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            problems.append(
                Problem(
                    file,
                    _line_of(doc, loc, line),
                    _message(cls, error),
                    kind,
                    name,
                    _dotted(loc) or None,
                )
            )
        return None
    found.invalid.discard(resource.key)
    return resource


def _message(cls: type[BaseModel], error: Any) -> str:
    kind = error["type"]
    loc = tuple(error["loc"])
    if kind == "extra_forbidden":
        known = _fields_at(cls, loc[:-1])
        unknown = str(loc[-1])
        return f"unknown field `{unknown}`{_did_you_mean(unknown, known or [])}"
    if kind == "missing":
        return "required field is missing"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _fields_at(cls: type[BaseModel], path: tuple[str | int, ...]) -> list[str] | None:
    """The field names (aliases) valid at ``path`` inside model ``cls``."""
    current: Any = cls
    for step in path:
        current = _model_in(current)
        if current is None:
            return None
        if isinstance(step, int):
            continue
        field = next(
            (f for n, f in current.model_fields.items() if (f.alias or n) == step or n == step),
            None,
        )
        if field is None:
            return None
        current = field.annotation
    model = _model_in(current)
    if model is None:
        return None
    return [f.alias or n for n, f in model.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, typing.Annotated):
        for arg in typing.get_args(annotation):
            model = _model_in(arg)
            if model is not None:
                return model
    return None


def _line_of(doc: Any, loc: tuple[str | int, ...], default: int) -> int:
    """The line of the deepest part of ``loc`` that exists in the parsed YAML."""
    line = default
    node = doc
    for step in loc:
        if isinstance(node, CommentedMap) and step in node:
            line = node.lc.key(step)[0] + 1
            node = node[step]
        elif isinstance(node, CommentedSeq) and isinstance(step, int) and step < len(node):
            line = node.lc.item(step)[0] + 1
            node = node[step]
        else:
            break
    return line


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for step in loc:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def _substitute(
    node: Any, path: tuple[str | int, ...], problems: list[tuple[tuple[str | int, ...], str]]
) -> Any:
    """Plain Python data from the YAML tree, with ``${VAR}`` replaced in strings."""
    if isinstance(node, dict):
        return {str(k): _substitute(v, (*path, str(k)), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, (*path, i), problems) for i, v in enumerate(node)]
    if isinstance(node, str):
        if "$" not in node:
            return str(node)

        def replace(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            value = os.environ.get(m.group(1), m.group(2))
            if value is None:
                problems.append((path, f"environment variable {m.group(1)} is not set"))
                return ""
            return value

        return _ENV.sub(replace, str(node))
    return node


def _plain(node: Any) -> Any:
    """JSON-ready data from the YAML tree, as written (no substitution): ruamel's
    scalar subclasses become plain values, YAML timestamps RFC 3339 text."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, datetime.date):
        return node.isoformat()
    return node


_IGNORED_DESTINATION_FIELDS: Final = {
    "ca_certs": (
        "CACerts",
        "Headwater checks a `uri` destination's certificate against the system's CAs; "
        "for your own CA use an HttpSink with `tls.caFile`",
    ),
    "audience": (
        "audience",
        "Headwater sends no OIDC tokens; for a bearer token use an HttpSink with `tokenEnv`",
    ),
}


def _warnings(resource: Resource, file: str, line: int) -> tuple[Problem, ...]:
    """Knative fields this resource sets that Headwater accepts but does not implement."""
    out: list[Problem] = []

    def ignored(field: str, why: str) -> None:
        out.append(Problem(file, line, f"ignored: {why}", resource.kind, resource.name, field))

    if isinstance(resource, Broker):
        if resource.spec.config is not None:
            ignored(
                "spec.config",
                "Knative points a Broker at the configuration of its implementation "
                "(a ConfigMap, a Kafka cluster); every Headwater Broker keeps its events "
                "in Headwater's own event log",
            )
        broker_class = resource.metadata.annotations.get(BROKER_CLASS_ANNOTATION)
        if broker_class is not None:
            ignored(
                f"metadata.annotations[{BROKER_CLASS_ANNOTATION}]",
                f"Headwater has one Broker class (its durable event log), not {broker_class}",
            )
    for path, destination in _destinations(resource):
        for name, (alias, why) in _IGNORED_DESTINATION_FIELDS.items():
            if getattr(destination, name) is not None:
                ignored(f"{path}.{alias}", why)
    return tuple(out)


def _check_duplicates(loaded: list[Loaded], problems: list[Problem]) -> None:
    seen: dict[tuple[str, str, str], Loaded] = {}
    for item in loaded:
        first = seen.setdefault(item.resource.key, item)
        if first is not item:
            r = item.resource
            problems.append(
                Problem(
                    item.file,
                    item.line,
                    f"defined twice; first at {first.file}:{first.line}",
                    r.kind,
                    r.name,
                )
            )
