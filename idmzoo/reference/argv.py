"""Parsing a reference command line the way the reference's argparse set-up does.

``add_dict_to_argparser`` gives every flag the argparse ``type`` of its default (``int``,
``float``, ``str``) and booleans go through ``str2bool``; a repeated flag keeps its last
value and ``--flag=value`` works too.  A mapping of flags is accepted as well, with
Python values of the flag's type.
"""

from __future__ import annotations

import numbers
import shlex
from collections.abc import Mapping, Sequence

from ..errors import FlagError
from ..messages import did_you_mean
from .flag_defaults import (
    COMMA_LIST_FLAGS,
    DEFAULTS,
    FALSE_STRINGS,
    NEGATIVE_NUMBER,
    SCRIPT_ONLY_FLAGS,
    TRUE_STRINGS,
)

__all__ = ["str2bool", "parse_flags"]


def str2bool(value: str | bool) -> bool:
    """Parse a boolean exactly like the reference ``script_util.str2bool``.

    Args:
        value: A bool (returned unchanged) or a string. Case-insensitive
            ``yes/true/t/y/1`` is True and ``no/false/f/n/0`` is False;
            surrounding whitespace is *not* stripped (the reference does not).

    Returns:
        The parsed boolean.

    Raises:
        FlagError: If ``value`` is neither a bool nor one of those strings.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value.lower() in TRUE_STRINGS:
            return True
        if value.lower() in FALSE_STRINGS:
            return False
    raise FlagError(
        f"boolean value expected, got {value!r} "
        f"(accepted: {'/'.join(TRUE_STRINGS)} or {'/'.join(FALSE_STRINGS)}, "
        "case-insensitive)"
    )


def _type_name(default: object) -> str:
    if isinstance(default, bool):
        return "bool"
    return type(default).__name__


def _parse_value(name: str, default: object, value: object) -> object:
    """Convert one flag value to the type argparse would produce.

    Strings go through the argparse ``type`` of the flag (``type(default)`` or
    ``str2bool``). Non-string values (mapping input only) must already have a
    matching Python type.
    """
    kind = _type_name(default)
    expected = {
        "bool": "a boolean (yes/true/t/y/1 or no/false/f/n/0)",
        "int": "an integer",
        "float": "a float",
        "str": "a string",
    }[kind]
    if kind == "str" and name in COMMA_LIST_FLAGS:
        expected = "a comma-separated string of integers"
        if name == "timestep_respacing":
            expected = "a string such as '250', 'ddim25' or '10,15,20'"

    def fail(extra: str = "") -> FlagError:
        return FlagError(f"invalid value for flag --{name}: expected {expected}, got {value!r}{extra}")

    if isinstance(value, str):
        if kind == "bool":
            try:
                return str2bool(value)
            except FlagError:
                raise fail() from None
        if kind == "int":
            try:
                return int(value)
            except ValueError:
                raise fail() from None
        if kind == "float":
            try:
                return float(value)
            except ValueError:
                raise fail() from None
        return value

    # Non-string values can only come from mapping input.
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise fail()
    if kind == "int":
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        raise fail()
    if kind == "float":
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        raise fail()
    if name in COMMA_LIST_FLAGS:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return str(int(value))
        if isinstance(value, Sequence) and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value
        ):
            return ",".join(str(int(v)) for v in value)
    raise fail()


def _unknown_flag_error(library: str, kind: str, name: str) -> FlagError:
    valid = list(DEFAULTS[(library, kind)])
    msg = f"unknown flag --{name} for {library} kind {kind!r}"
    other_kinds = [k for (lib, k), d in DEFAULTS.items() if lib == library and k != kind and name in d]
    if other_kinds:
        msg += f" (it is a flag of kind {' / '.join(repr(k) for k in other_kinds)}"
        if kind == "sr" and name == "image_size":
            msg += "; super-resolution scripts take --large_size and --small_size"
        msg += ")"
    elif name in SCRIPT_ONLY_FLAGS[library]:
        msg += (
            f" (it is a flag of {library}'s training/sampling scripts that never "
            "reaches the model constructor; drop it)"
        )
    msg += "." + did_you_mean(name, valid, prefix="--")
    msg += " Valid flags: " + ", ".join(f"--{v}" for v in valid)
    return FlagError(msg)


def _argv_to_raw(library: str, kind: str, argv: Sequence[str]) -> dict[str, str]:
    """Split argv tokens into ``{name: raw string}`` like argparse (last one wins)."""
    valid = DEFAULTS[(library, kind)]
    raw: dict[str, str] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not isinstance(token, str):
            raise TypeError(f"flag tokens must be strings, got {token!r}")
        if not token.startswith("--") or token == "--":
            if token.startswith("-") and token != "--" and not NEGATIVE_NUMBER.match(token):
                raise _unknown_flag_error(library, kind, token.lstrip("-"))
            raise FlagError(
                f"unexpected argument {token!r}: the reference scripts take no positional "
                "arguments; flags look like '--name value' or '--name=value'"
            )
        body = token[2:]
        if "=" in body:
            name, value = body.split("=", 1)
            i += 1
        else:
            name = body
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is None or (
                isinstance(nxt, str) and nxt.startswith("-") and not NEGATIVE_NUMBER.match(nxt)
            ):
                if name not in valid:
                    raise _unknown_flag_error(library, kind, name)
                raise FlagError(f"flag --{name} expected one argument (a value), got none")
            value = nxt
            i += 2
        if name not in valid:
            raise _unknown_flag_error(library, kind, name)
        raw[name] = value
    return raw


def _mapping_to_raw(library: str, kind: str, flags: Mapping[str, object]) -> dict[str, object]:
    valid = DEFAULTS[(library, kind)]
    raw: dict[str, object] = {}
    for key, value in flags.items():
        if not isinstance(key, str):
            raise TypeError(f"flag names must be strings, got {key!r}")
        name = key[2:] if key.startswith("--") else key
        if name not in valid:
            raise _unknown_flag_error(library, kind, name)
        if name in raw:
            raise FlagError(f"flag --{name} given twice (as {name!r} and '--{name}')")
        raw[name] = value
    return raw


def parse_flags(
    library: str, kind: str, flags: str | Sequence[str] | Mapping[str, object]
) -> dict[str, object]:
    """Return the full argparse namespace (defaults overridden by ``flags``)."""
    if isinstance(flags, str):
        try:
            argv = shlex.split(flags)
        except ValueError as exc:
            raise FlagError(f"cannot split flag string {flags!r}: {exc}") from None
        raw: Mapping[str, object] = _argv_to_raw(library, kind, argv)
    elif isinstance(flags, Mapping):
        raw = _mapping_to_raw(library, kind, flags)
    elif isinstance(flags, Sequence):
        raw = _argv_to_raw(library, kind, flags)
    else:
        raise TypeError(
            f"flags must be a string, a sequence of argv tokens or a mapping, got {type(flags).__name__}"
        )
    args = dict(DEFAULTS[(library, kind)])
    for name, value in raw.items():
        args[name] = _parse_value(name, args[name], value)
    return args
