"""Typed reading of config values that may arrive as strings from the command line.

``python -m monai.bundle run ... --risk#enabled false`` passes the string ``"false"`` (``fire`` only parses
Python literals such as ``False``); a bare ``"false"`` would be truthy. :func:`as_bool` reads both spellings.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["as_bool", "one_of"]

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
