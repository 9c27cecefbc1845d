"""Every setting of a run checked before its first stage starts, and the overrides normalised for the stages.

:func:`check_settings` reads the values a stage's config resolves to and stops with one :class:`SettingsError`
listing every bad one -- the id, the value and what is allowed -- so that ``--max_epochs -1`` or
``--val_interval 0`` stop at once instead of after the source model and the risk maps were made.
:func:`check_override_ids` refuses an override of an id no config of the run has, naming the nearest id (a
misspelt ``--risk#strenght`` would otherwise add a key nothing reads), and names the replacement of an id that was
renamed. :func:`normalized_overrides` turns the command line's ``"false"`` into ``False`` for the boolean ids, so
that the configs can test them as they are.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from transrisk_components.bundle.engine.source_model import HEAD_INITS
from transrisk_components.bundle.io.config_values import as_bool
from transrisk_components.bundle.stages.risk_options import DEAD_CLASS_ACTIONS, PROBABILITY_STORAGE, RISK_MAPS
from transrisk_components.method.losses import CE_VOXELS, DICE_MODES, NORMALIZATIONS
from transrisk_components.method.masks import RISK_MASKS
from transrisk_components.method.risk import RISK_NORMALIZATIONS, WEIGHT_SCHEMES
from transrisk_components.method.source_outputs import SOURCE_OUTPUTS

__all__ = [
    "BOOLEAN_IDS",
    "CHECKS",
    "RENAMED",
    "SettingsError",
    "check_override_ids",
    "check_settings",
    "flat_ids",
    "normalized_overrides",
]


class SettingsError(ValueError):
    """One or more settings are invalid; the message lists each with what is allowed."""


@dataclass(frozen=True)
class Check:
    """What a setting may be: ``test(value)`` is true for an allowed value; ``allowed`` says it in words."""

    allowed: str
    test: Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _boolean(value: Any) -> bool:
    try:
        as_bool(value)
    except ValueError:
        return False
    return isinstance(value, (bool, str))


def integer(minimum: int | None = None, optional: bool = False) -> Check:
    """An integer, at least ``minimum``; ``None`` too when ``optional``."""
    words = "an integer" if minimum is None else f"an integer >= {minimum}"
    return Check(words + (" or null" if optional else ""),
                 lambda v: (optional and v is None) or (_is_int(v) and (minimum is None or v >= minimum)))


def number(low: float | None = None, high: float | None = None, above: bool = False) -> Check:
    """A finite number in ``[low, high]`` (``(low, high]`` when ``above``)."""
    words = "a number" + (f" > {low}" if above else f" >= {low}" if low is not None else "") + (
        f" and <= {high}" if high is not None else "")
    return Check(words, lambda v: _is_number(v) and (low is None or (v > low if above else v >= low))
                 and (high is None or v <= high))


def one_of(*choices: Any) -> Check:
    """One of ``choices``."""
    return Check(f"one of {list(choices)}", lambda v: v in choices)


BOOLEAN = Check("true or false", _boolean)

#: The ids every boolean setting has (command-line strings such as "false" are read as booleans).
BOOLEAN_IDS = ("train_source", "progress", "overwrite", "debug", "risk#enabled", "risk#shuffle", "safe#enabled", "safe#racing",
               "safe#ensembles", "safe#composites")

#: Config id -> what it may be. Every stage's config is checked against it before the first stage starts.
CHECKS: dict[str, Check] = {
    **{name: BOOLEAN for name in BOOLEAN_IDS},
    "seed": integer(),
    "restart": integer(minimum=0),
    "max_epochs": integer(minimum=1),
    "source_epochs": integer(minimum=1),
    "val_interval": integer(minimum=1),
    "ckpt_interval": integer(minimum=1),
    "batch_size": integer(minimum=1),
    "num_samples": integer(minimum=1),
    "num_workers": integer(minimum=0),
    "freeze_epochs": integer(minimum=0),
    "num_target_train": integer(minimum=1),
    "num_target_val": integer(minimum=1),
    "num_target_test": integer(minimum=0),
    "num_source": integer(minimum=1, optional=True),
    "learning_rate": number(0.0, above=True),
    "cache_rate": number(0.0, 1.0),
    "source_cache_gb": number(0.0),
    "patch_size": Check("a list of 3 integers >= 1", lambda v: isinstance(v, (list, tuple)) and len(v) == 3
                        and all(_is_int(x) and x >= 1 for x in v)),
    "target_init": one_of("source", "random"),
    "head_init": one_of(*HEAD_INITS),
    "source_output": one_of(*SOURCE_OUTPUTS),
    "risk#map_normalization": one_of(*RISK_NORMALIZATIONS),
    "risk#mask": one_of(*RISK_MASKS),
    "risk#map": one_of(*RISK_MAPS),
    "risk#location_patch": integer(minimum=1),
    "risk#probabilities": one_of(*PROBABILITY_STORAGE),
    "risk#scheme": one_of(*WEIGHT_SCHEMES),
    "risk#strength": number(0.0),
    "risk#ce_denominator": one_of(*NORMALIZATIONS),
    "risk#ce_voxels": one_of(*CE_VOXELS),
    "risk#dice": one_of(*DICE_MODES),
    "risk#sampling": one_of("posneg", "risk"),
    "risk#dead_classes": one_of(*DEAD_CLASS_ACTIONS),
    "risk#dead_class_margin": number(0.0, 1.0),
    "safe#rungs": Check("a list of fractions, each > 0 and < 1", lambda v: isinstance(v, (list, tuple))
                        and all(_is_number(x) and 0 < x < 1 for x in v)),
    "safe#workers": Check('"auto" or an integer >= 1', lambda v: v == "auto" or (_is_int(v) and v >= 1)),
    "safe#folds": integer(minimum=1),
}

#: Ids of earlier versions -> what to use instead.
RENAMED: dict[str, str] = {
    "risk#normalization": "risk#map_normalization",
    "risk#loss_normalization": "risk#ce_denominator",
    "fingerprint#source": "train_source false (the source checkpoint is used as it is)",
    "fingerprint#finetune": "nothing: every stage's fingerprint is its resolved config (docs/reuse_and_resume.md)",
    "fingerprint#risk": "nothing: every stage's fingerprint is its resolved config (docs/reuse_and_resume.md)",
}


def _cross_checks(values: Mapping[str, Any]) -> list[str]:
    """The problems of settings that are allowed alone but not together."""
    problems = []
    max_epochs, val_interval = values.get("max_epochs"), values.get("val_interval")
    if _is_int(max_epochs) and _is_int(val_interval) and 1 <= max_epochs < val_interval:
        problems.append(f"val_interval {val_interval}: must be at most max_epochs ({max_epochs}), since the model is "
                        "chosen at the validation epochs")
    freeze = values.get("freeze_epochs")
    if _is_int(freeze) and _is_int(max_epochs) and freeze >= max_epochs >= 1:
        problems.append(f"freeze_epochs {freeze}: must be below max_epochs ({max_epochs})")
    if values.get("risk#sampling") == "risk" and values.get("risk#enabled") is False:
        problems.append("risk#sampling 'risk': samples patch centres by the risk map, so risk#enabled must be true")
    if values.get("source_output") == "sigmoid" and values.get("train_source") is True:
        problems.append("source_output 'sigmoid': describes a source from elsewhere, but the source stage would train one "
                        "here, and it trains softmax networks: pass --train_source false (the source_ckpt given is used "
                        "as it is), or --source_output softmax")
    if values.get("head_init") == "leep" and values.get("source_output") == "sigmoid":
        problems.append("head_init 'leep': needs a softmax source (source_output softmax), a sigmoid source has no unit "
                        "per LEEP state")
    folds, pooled = values.get("safe#folds"), _pooled_cases(values)
    if _is_int(folds) and folds > 1:
        if values.get("safe#racing") is True:
            problems.append(f"safe#folds {folds}: k-fold choice trains every candidate on every fold, so it does not "
                            "race them; pass --safe#racing false or --safe#folds 1")
        if values.get("safe#ensembles") is True:
            problems.append(f"safe#folds {folds}: k-fold choice does not score ensembles yet (each fold has its own "
                            "models); pass --safe#ensembles false or --safe#folds 1")
        if values.get("safe#composites") is True:
            problems.append(f"safe#folds {folds}: k-fold choice does not score the per-region composite yet (each fold "
                            "has its own models); pass --safe#composites false or --safe#folds 1")
        if pooled is not None and folds > pooled:
            problems.append(f"safe#folds {folds}: must be at most the {pooled} pooled target cases (num_target_train + "
                            "num_target_val), so that every fold holds a case")
    return problems


def _pooled_cases(values: Mapping[str, Any]) -> int | None:
    """num_target_train + num_target_val when both are valid, the cases k-fold choice deals into folds."""
    train, val = values.get("num_target_train"), values.get("num_target_val")
    return train + val if _is_int(train) and _is_int(val) and train >= 1 and val >= 1 else None


def check_settings(values: Mapping[str, Any], where: str) -> None:
    """Check the resolved values of a stage's settings (config id -> value; ids the stage lacks are left out).

    Args:
        values: config id -> resolved value.
        where: which stage or candidate the values belong to, for the message.

    Raises:
        SettingsError: listing every id whose value is not allowed, with its value and what is allowed.
    """
    problems = [f"{name} {value!r}: must be {CHECKS[name].allowed}" for name, value in values.items()
                if name in CHECKS and not CHECKS[name].test(value)]
    problems += _cross_checks(values)
    if problems:
        raise SettingsError(f"{where}: " + "; ".join(problems))


def normalized_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` with the boolean ids' command-line strings (``"false"``, ``"True"``) read as booleans.

    Raises:
        SettingsError: a boolean id whose value spells no boolean.
    """
    result = dict(overrides)
    for name in BOOLEAN_IDS:
        if name in result and isinstance(result[name], str):
            try:
                result[name] = as_bool(result[name], name)
            except ValueError as error:
                raise SettingsError(str(error)) from None
    return result


def flat_ids(config: Any, prefix: str = "") -> Iterable[str]:
    """Every id of a raw config (``a``, ``a#b``, ``a#0#c``), parents before children."""
    if isinstance(config, Mapping):
        items = config.items()
    elif isinstance(config, list):
        items = enumerate(config)
    else:
        return
    for key, value in items:
        name = f"{prefix}#{key}" if prefix else str(key)
        yield name
        yield from flat_ids(value, name)


def _is_component_argument(name: str, config: Mapping[str, Any], known: set[str]) -> bool:
    """Whether ``name`` adds an argument to a component of ``config`` (``network_def#dropout_prob``)."""
    if "#" not in name:
        return False
    parent = name.rsplit("#", 1)[0]
    if parent not in known:
        return False
    node: Any = config
    for key in parent.split("#"):
        node = node[int(key)] if isinstance(node, list) else node.get(key)
    return isinstance(node, Mapping) and "_target_" in node


def check_override_ids(overrides: Iterable[str], config: Mapping[str, Any], where: str) -> None:
    """Refuse override ids that no config of the run has.

    An id is known when a config has it, or when it adds an argument to a component (a dict with ``_target_``, e.g.
    ``network_def#dropout_prob``: the component's constructor then checks it).

    Args:
        overrides: the override ids.
        config: the raw merged config of every file the run's stages read (without the overrides).
        where: what the overrides were given to, for the message.

    Raises:
        SettingsError: naming each unknown id with the nearest known ones, or the id that replaced a renamed one.
    """
    known = set(flat_ids(config))
    problems = []
    for name in overrides:
        name = str(name).replace("::", "#")
        if name in known or _is_component_argument(name, config, known):
            continue
        if name in RENAMED:
            problems.append(f"{name} is not an id any more: use {RENAMED[name]}")
            continue
        nearest = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(nearest)}?" if nearest else ""
        problems.append(f"{name} is not an id of the bundle's configs{hint}")
    if problems:
        raise SettingsError(f"{where}: " + "; ".join(problems))
