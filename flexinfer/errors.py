"""Error types shared by every component."""

from __future__ import annotations


class ParseError(ValueError):
    """A value from outside (label, annotation, file, request) could not be understood.

    The message names what was being parsed, shows the offending value (truncated) and says what
    was expected, so it can be shown to an operator as is.
    """

    def __init__(self, what: str, value: object, expected: str) -> None:
        try:
            shown = repr(value)
        except ValueError:  # e.g. an int with more digits than Python will print
            shown = f"<{type(value).__name__} too large to show>"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        self.what = what
        self.value = value
        self.expected = expected
        super().__init__(f"{what}: cannot parse {shown}; expected {expected}")


class ValidationError(ValueError):
    """A Model spec (or other structured input) is invalid; `field` is a dotted path."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")
