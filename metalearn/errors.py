"""Errors that are the user's own mistake: reported as one clear line, never a stack trace."""

from __future__ import annotations

from collections.abc import Iterable


class UserError(ValueError):
    """A mistake in what the user asked for (unknown name, bad option, missing data)."""


class ParseError(UserError):
    """Malformed DSL text; the message names the position and what was expected."""

    def __init__(self, text: str, position: int, expected: str) -> None:
        self.text, self.position, self.expected = text, position, expected
        found = repr(text[position:position + 12]) if position < len(text) else "end of text"
        super().__init__(f"cannot parse {text!r}: at position {position} expected {expected}, found {found}")


def unknown(kind: str, name: str, accepted: Iterable[str]) -> UserError:
    """``unknown space 'nope'; accepted: backprop, hparams, loss, optimizer``."""
    return UserError(f"unknown {kind} {name!r}; accepted: {', '.join(sorted(accepted))}")
