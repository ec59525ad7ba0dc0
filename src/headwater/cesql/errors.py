"""CESQL's error types (spec.md 3.3).

``compile`` raises :class:`ParseError`; evaluation never raises: it returns a
value together with a list of the other errors.
"""

from __future__ import annotations

CONTEXT = 72
"""Characters of the offending line a ParseError message shows around the caret."""


class CesqlError(Exception):
    """Base of every CESQL error."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CesqlError)
            and type(other) is type(self)
            and other.message == self.message
        )

    def __hash__(self) -> int:
        return hash((type(self), self.message))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class ParseError(CesqlError):
    """The expression is not valid CESQL; ``line`` and ``column`` are 1-based."""

    def __init__(self, message: str, text: str, offset: int) -> None:
        before = text[:offset]
        self.line = before.count("\n") + 1
        self.column = offset - (before.rfind("\n") + 1) + 1
        self.reason = message
        source_line = text.split("\n")[self.line - 1]
        start = max(0, min(self.column - 1 - CONTEXT // 2, len(source_line) - CONTEXT))
        shown = source_line[start : start + CONTEXT]
        prefix = "..." if start else ""
        caret = " " * (len(prefix) + self.column - 1 - start) + "^"
        source_line = prefix + shown + ("..." if start + CONTEXT < len(source_line) else "")
        super().__init__(
            f"line {self.line}, column {self.column}: {message}\n  {source_line}\n  {caret}"
        )


class MathError(CesqlError):
    """Division by zero or 32-bit integer overflow."""


class CastError(CesqlError):
    """A value could not be converted to the type an operator or function needs."""


class MissingAttributeError(CesqlError):
    """The expression addressed an attribute the event does not have."""


class MissingFunctionError(CesqlError):
    """No function with that name takes that many arguments."""


class FunctionEvaluationError(CesqlError):
    """A function could not compute its result from its arguments."""


class GenericError(CesqlError):
    """Any other error."""
