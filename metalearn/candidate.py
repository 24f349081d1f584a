"""A candidate: one point of one search space, as canonical text and a content key."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def content_key(text: str) -> str:
    """A short stable hash of ``text`` (16 hex digits of SHA-256)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Candidate:
    """One proposal of a search space.

    Attributes:
        space: the registered name of the space (``"loss"``, ``"hparams+loss"``, ...).
        text: the canonical text of the genome; ``space.parse(text)`` rebuilds it exactly.
        key: a hash of the *simplified* canonical form: equivalent programs share a key.
        name: the name of a known point, when the candidate is one (``"adam"``).
    """

    space: str
    text: str
    key: str
    name: str = ""

    def __str__(self) -> str:
        return self.name or self.text
