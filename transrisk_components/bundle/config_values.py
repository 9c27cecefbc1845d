"""Typed reading of config values that may arrive as strings from the command line.

``python -m monai.bundle run ... --risk#enabled false`` passes the string ``"false"`` (``fire`` only parses
Python literals such as ``False``); a bare ``"false"`` would be truthy. :func:`as_bool` reads both spellings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["as_bool", "one_of", "without_renamed_options"]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", "none", ""}


def as_bool(value: bool | int | str | None, name: str = "value") -> bool:
    """``value`` as a bool: bools and ints as Python reads them, strings such as ``"false"``/``"True"``/``"1"``.

    Raises:
        ValueError: a string that spells no boolean; the message names the config id ``name``.
    """
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def one_of(value: str, choices: Sequence[str], name: str = "value", hint: str = "") -> str:
    """``value`` when it is one of ``choices``: a config option that selects between transforms by ``_disabled_``
    expressions, where a misspelt value would otherwise disable every alternative without a word.

    Raises:
        ValueError: ``value`` not in ``choices``; the message names the config id ``name`` and adds ``hint``.
    """
    if value not in choices:
        name = name.replace("::", "#")  # MONAI rewrites a '#' inside a config string to '::'
        raise ValueError(f"{name} must be one of {list(choices)} here, got {value!r}{'; ' + hint if hint else ''}")
    return value


def without_renamed_options(options: Mapping[str, object], section: str, renamed: Mapping[str, str]) -> Mapping[str, object]:
    """``options`` (a config section such as ``risk``) when it holds none of the ids that were ``renamed``.

    A command line or candidates file with an old id (``--risk#normalization minmax``) would otherwise add a key that
    nothing reads, and the run would silently use the default.

    Raises:
        ValueError: naming every old id found and the id to use instead.
    """
    old = [key for key in options if key in renamed]
    if old:
        uses = "; ".join(f"{section}#{key} is now {section}#{renamed[key]}" for key in old)
        raise ValueError(f"renamed option{'s' if len(old) > 1 else ''}: {uses}. Use the new id{'s' if len(old) > 1 else ''}.")
    return options
