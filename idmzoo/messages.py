"""Small text helpers shared by every error message: suggestions, shapes, one-line causes."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

__all__ = ["did_you_mean", "format_shape", "one_line", "shorten"]

#: Longest echo of user input in a message; a 100 MB block name is not worth printing.
_ECHO_LIMIT = 80


def did_you_mean(name: str, candidates: Iterable[str], *, n: int = 3, prefix: str = "") -> str:
    """`` Did you mean 'a' or 'b'?`` for the candidates closest to ``name``, or ``""``.

    Unique-prefix matches come first (what argparse would accept as an abbreviation),
    then :func:`difflib.get_close_matches`.  ``prefix`` is written before each name
    (``"--"`` for command-line flags).
    """
    candidates = list(candidates)
    name = shorten(str(name), _ECHO_LIMIT)
    found = [c for c in candidates if name and c.startswith(name)]
    found += [c for c in difflib.get_close_matches(name, candidates, n=n, cutoff=0.5) if c not in found]
    if not found:
        return ""
    return " Did you mean " + " or ".join(f"{prefix}{c}" if prefix else repr(c) for c in found[:n]) + "?"


def format_shape(shape: Sequence[int | str] | None) -> str:
    """``[2, 64, 16, 16]`` (or ``-`` for no shape); symbolic axes such as ``H/4`` print as they are."""
    return "-" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def one_line(err: BaseException) -> str:
    """``Type: message`` on one line, so every failure is one line of stderr."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def shorten(text: str, limit: int = _ECHO_LIMIT) -> str:
    """``text`` cut to ``limit`` characters with the number left out, for echoing user input."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"
