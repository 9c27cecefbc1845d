"""The candidate starts of safe transfer: named override sets of the fine-tuning config.

A candidate is ``{name: {config id: value}}`` on top of the bundle's ``train.json`` and the run's own overrides: the
bundles' defaults are ``risk_map`` (``{}``: the risk-weighted default), ``plain`` (``risk#enabled false``) and
``scratch`` (``target_init random``); any option can make one, from ``safe#candidates`` or a JSON file
(``safe#candidates_file``). Their order is the selection rule's tie order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transrisk_components.bundle.io.config_values import as_bool

__all__ = ["load_candidates", "needs_risk_maps"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def load_candidates(candidates: Mapping[str, Mapping[str, Any]] | None, candidates_file: str | None) -> dict[str, dict[str, Any]]:
    """The candidates: ``candidates_file`` (JSON ``{name: {config id: value}}``) when given, else ``candidates``.

    Raises:
        FileNotFoundError / ValueError: the file is missing or not such a mapping, a name is not a folder-safe word,
            or there is no candidate.
    """
    if candidates_file:
        path = Path(candidates_file)
        if not path.is_file():
            raise FileNotFoundError(f"safe#candidates_file {path} does not exist")
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"safe#candidates_file {path} is not valid JSON: {error}") from error
        source = f"safe#candidates_file {path}"
    else:
        loaded, source = candidates, "safe#candidates"
    if not isinstance(loaded, Mapping) or not loaded:
        raise ValueError(f"{source} must be a non-empty mapping of candidate name -> config overrides")
    result = {}
    for name, overrides in loaded.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{source}: candidate name {name!r} must be letters, digits, '_', '-' or '.' (a folder name)")
        if not isinstance(overrides, Mapping):
            raise ValueError(f"{source}: candidate {name!r} must map config ids to values, got {overrides!r}")
        result[name] = dict(overrides)
    return result


def needs_risk_maps(values: Mapping[str, Any]) -> bool:
    """Whether a fine-tuning run with these resolved settings reads the risk stage's output: it weights its loss by
    the map (``risk#enabled``), or it starts from the source and acts on the classes the source gives no information
    about (``risk#dead_classes`` other than ``warn``) or sets its head through ``P(z | y)`` (``head_init leep``)."""
    from_source = values.get("target_init") == "source"
    return (
        as_bool(values.get("risk#enabled", False), "risk#enabled")
        or (from_source and values.get("risk#dead_classes", "warn") != "warn")
        or (from_source and values.get("head_init", "random") == "leep")
    )
