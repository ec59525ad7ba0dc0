"""Load resources from multi-document YAML, reporting every problem with file and line.

How this works: ruamel.yaml parses each document keeping line numbers;
``${VAR}`` / ``${VAR:-default}`` are substituted in string values (after
parsing, so a secret can never break the YAML); each document is validated by
the pydantic model of its kind; every error is mapped back from its field path
to the line that holds the field. All problems of all files are collected and
raised together as one :class:`ConfigError`. Cross-resource references
(a Trigger's broker, a Destination's ref, a Subscription's channel) are
checked by :func:`check_references` against the whole desired state.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from headwater.resources.kinds import ADDRESSABLE_KINDS, KINDS
from headwater.resources.models import (
    Broker,
    Destination,
    Resource,
    Subscription,
    Trigger,
)

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
    """A validated resource and where it came from."""

    resource: Resource
    file: str
    line: int


def load_paths(paths: Iterable[str | Path]) -> list[Loaded]:
    """Load every resource in the given files and directories (``*.yaml``, ``*.yml``)."""
    loaded: list[Loaded] = []
    problems: list[Problem] = []
    for path in _expand(paths, problems):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(str(path), None, f"cannot read: {exc}"))
            continue
        _load(text, str(path), loaded, problems)
    _check_duplicates(loaded, problems)
    if problems:
        raise ConfigError(problems)
    return loaded


def load_text(text: str, file: str = "<input>") -> list[Loaded]:
    """Load every resource in one YAML text."""
    loaded: list[Loaded] = []
    problems: list[Problem] = []
    _load(text, file, loaded, problems)
    _check_duplicates(loaded, problems)
    if problems:
        raise ConfigError(problems)
    return loaded


def check_references(loaded: Sequence[Loaded]) -> None:
    """Raise :class:`ConfigError` for references to resources that do not exist."""
    present = {item.resource.key for item in loaded}
    problems: list[Problem] = []
    for item in loaded:
        resource = item.resource
        ns = resource.namespace

        def problem(field: str, message: str, item: Loaded = item) -> None:
            r = item.resource
            problems.append(Problem(item.file, item.line, message, r.kind, r.name, field))

        if isinstance(resource, Trigger) and (Broker.KIND, ns, resource.spec.broker) not in present:
            problem("spec.broker", f"no Broker {resource.spec.broker!r} in namespace {ns!r}")
        if isinstance(resource, Subscription):
            ch = resource.spec.channel
            if ch.kind not in ("Channel", "InMemoryChannel"):
                problem("spec.channel.kind", f"must be Channel or InMemoryChannel, not {ch.kind}")
            elif (ch.kind, ns, ch.name) not in present:
                problem("spec.channel", f"no {ch.kind} {ch.name!r} in namespace {ns!r}")
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
                problem(
                    f"{field}.ref",
                    f"no {ref.kind} {ref.name!r} in namespace {ref.namespace or ns!r}",
                )
    if problems:
        raise ConfigError(problems)


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


def _load(text: str, file: str, loaded: list[Loaded], problems: list[Problem]) -> None:
    yaml = YAML(typ="rt")
    try:
        documents = list(yaml.load_all(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problems.append(Problem(file, line, f"invalid YAML: {exc.problem or exc.context}"))
        return
    for doc in _documents(documents):
        line = doc.lc.line + 1 if hasattr(doc, "lc") else 1
        if not isinstance(doc, CommentedMap):
            problems.append(Problem(file, line, "a resource must be a YAML mapping"))
            continue
        resource = _validate(doc, file, line, problems)
        if resource is not None:
            loaded.append(Loaded(resource, file, line))


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


def _validate(doc: CommentedMap, file: str, line: int, problems: list[Problem]) -> Resource | None:
    kind = doc.get("kind")
    api_version = doc.get("apiVersion")
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        problems.append(
            Problem(
                file,
                _line_of(doc, ("kind",), line),
                f"unknown kind {kind!r}; Headwater knows {', '.join(sorted(KINDS))}",
                field="kind",
            )
        )
        return None
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
        return cls.model_validate(data)
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


def _message(cls: type[BaseModel], error: Any) -> str:
    kind = error["type"]
    loc = tuple(error["loc"])
    if kind == "extra_forbidden":
        known = _fields_at(cls, loc[:-1])
        unknown = str(loc[-1])
        close = difflib.get_close_matches(unknown, known or [], n=1, cutoff=0.6)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        return f"unknown field `{unknown}`{hint}"
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
