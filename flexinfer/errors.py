"""Error types shared by every component."""

from __future__ import annotations


def text_of(value: object) -> str:
    """str(value) that never raises: ints with more than 4300 digits (or containers holding them) cannot be
    printed, and parsers must turn such junk into a ParseError, not a ValueError from deep inside."""
    try:
        return str(value)
    except ValueError:
        return f"<{type(value).__name__} too large to show>"


def shown(value: object, limit: int = 80) -> str:
    """repr(value) for an error message: truncated, and never raising."""
    try:
        text = repr(value)
    except ValueError:  # e.g. an int with more digits than Python will print
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ParseError(ValueError):
    """A value from outside (label, annotation, file, request) could not be understood.

    The message names what was being parsed, shows the offending value (truncated) and says what
    was expected, so it can be shown to an operator as is.
    """

    def __init__(self, what: str, value: object, expected: str) -> None:
        text = shown(value)
        self.what = what
        self.value = value
        self.expected = expected
        super().__init__(f"{what}: cannot parse {text}; expected {expected}")


class ValidationError(ValueError):
    """A Model spec (or other structured input) is invalid; `field` is a dotted path."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class NeverRuns(ValidationError):
    """A well-formed Model that can never run (e.g. a backend its node selector's architecture cannot run).

    The controller and the CRD reject it like any invalid spec; `flexinfer preflight` answers it with a BLOCK
    check and exit 20, because "will this run?" is the question preflight exists to answer."""
