"""Typed reading of config values that may arrive as strings from the command line.

``python -m monai.bundle run ... --risk#enabled false`` passes the string ``"false"`` (``fire`` only parses
Python literals such as ``False``); a bare ``"false"`` would be truthy. :func:`as_bool` reads both spellings.
"""

from __future__ import annotations

__all__ = ["as_bool"]

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
