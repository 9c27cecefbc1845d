"""A stage's fingerprint: what made its outputs, read from the stage's own resolved config.

A stage (source training, risk maps, one fine-tuning run) runs one component of its config (``source#stage``,
``risk_stage``, ``train#trainer``). Its fingerprint is

- ``config``: the raw value of every id that component reaches through ``@`` references -- its transforms, network,
  loss, optimiser, handlers, datasets and the parameters they read, after MONAI's macros (``%``) and with every
  override applied -- so an edit of any of them, in a file or on the command line, is seen;
- ``resolved``: the value of every such id that is an expression over plain values only (the device type, whether
  AMP is on, the memory format, the number of classes, the input channels), because those depend on the machine or
  on other ids and their text alone does not say what they were;
- ``splits``: the case ids of each datalist the stage reads, by its role (``target_train``, ``target_val``, ...), in
  order, so that a case moved from one role to another (another fold, another split size) is seen;
- ``inputs``: the size and modification time of every image and label file the stage reads;
- ``upstream``: the digests of the stages it builds on (the source model's fingerprint, or the SHA-256 of a
  checkpoint given from outside; the risk maps' key);
- the package version.

Left out are the ids that say where outputs go or how a run shows itself, not what it computes
(:data:`WHERE_IDS`), the data split (:data:`INPUT_IDS`: the files it gives the stage are its inputs), and the run's
length (:data:`LENGTH_IDS`): a run asked for more epochs continues one that did fewer. :func:`differences` names every id whose value changed, as ``config.train#random_transforms#4#prob: 0.5 ->
0.25``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.bundle.config_item import ConfigExpression
from monai.bundle.reference_resolver import ReferenceResolver

import transrisk_components
from transrisk_components.bundle.io.records import datalist_files, file_identity
from transrisk_components.utils.io import file_sha256

__all__ = ["INPUT_IDS", "LENGTH_IDS", "WHERE_IDS", "differences", "digest", "file_digest", "identity", "reachable_ids", "stage_fingerprint"]

#: Ids that say where a run writes, where it reads from (the files' identities are recorded instead), or how it
#: shows itself -- not what it computes.
WHERE_IDS = frozenset({
    "bundle_root", "dataset_dir", "phantom_dir", "output_dir", "models_dir", "ckpt_dir", "log_dir", "risk_dir",
    "source_ckpt", "risk_manifest", "risk_key", "risk_export_dir", "run_name", "progress", "overwrite",
    "debug", "is_main_process", "ckpt_interval",
})
#: The length of a training stage: left out of its fingerprint and recorded beside it (a longer run continues a shorter).
LENGTH_IDS = frozenset({"max_epochs", "source_epochs"})
#: The data split: recorded by the files it gives each stage (its ``inputs``), so that a setting that does not change
#: a stage's cases (the target task, for the source stage) does not change the stage's fingerprint.
INPUT_IDS = frozenset({"scenario"})
#: Record keys that are not part of what made the outputs.
_BOOKKEEPING = ("outputs", "complete", "epochs", "request")

_SEP = ReferenceResolver.sep


def _user_id(monai_id: str) -> str:
    """``train::handlers::0`` -> ``train#handlers#0``."""
    return monai_id.replace(_SEP, "#")


def _top(monai_id: str) -> str:
    return monai_id.split(_SEP, 1)[0]


def _references(parser: ConfigParser, monai_id: str) -> set[str]:
    """The ids ``monai_id``'s raw config refers to with ``@``, outside its own sub-tree."""
    found = ReferenceResolver.find_refs_in_config(parser.get(monai_id), monai_id)
    return {ReferenceResolver.normalize_id(r) for r in found if not ReferenceResolver.normalize_id(r).startswith(monai_id + _SEP)}


def reachable_ids(parser: ConfigParser, roots: Iterable[str]) -> list[str]:
    """The ids ``roots`` reach through ``@`` references (themselves included), less :data:`WHERE_IDS`,
    :data:`LENGTH_IDS` and :data:`INPUT_IDS` (whose references are not followed), and less any id inside another one
    found: each as MONAI writes it (``train::trainer``), sorted."""
    skipped = WHERE_IDS | LENGTH_IDS | INPUT_IDS
    todo = [ReferenceResolver.normalize_id(r) for r in roots]
    seen: set[str] = set()
    while todo:
        current = todo.pop()
        if current in seen or _top(current) in skipped:
            continue
        seen.add(current)
        todo.extend(_references(parser, current) - seen)
    return sorted(i for i in seen if not any(i.startswith(other + _SEP) for other in seen))


def _plain(value: Any) -> Any:
    """``value`` as JSON data, or :data:`_NOT_PLAIN` (devices by their type, dtypes and formats by name)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.device):
        return value.type
    if isinstance(value, (torch.dtype, torch.memory_format)):
        return str(value)
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _NOT_PLAIN if any(i is _NOT_PLAIN for i in items) else items
    if isinstance(value, Mapping):
        items = {str(k): _plain(v) for k, v in value.items()}
        return _NOT_PLAIN if any(v is _NOT_PLAIN for v in items.values()) else items
    return _NOT_PLAIN


_NOT_PLAIN = object()


def _builds_components(parser: ConfigParser, monai_id: str) -> bool:
    """Whether resolving ``monai_id`` would build a component (a ``_target_`` anywhere in what it reaches)."""
    for reached in reachable_ids(parser, [monai_id]):
        text = json.dumps(parser.get(reached))
        if '"_target_"' in text:
            return True
    return False


def stage_fingerprint(
    parser: ConfigParser,
    stage: str,
    roots: Sequence[str],
    datalists: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    upstream: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The fingerprint of a stage whose run reads the ids ``roots`` of ``parser`` (parsed, overrides applied).

    Args:
        parser: the stage's config parser.
        stage: the stage's name (``"source"``, ``"risk"``, ``"finetune"``).
        roots: the components the stage runs (e.g. ``["train#trainer"]``).
        datalists: role -> the datalist whose cases (and their image and label files) the stage reads in that role.
        upstream: name -> digest of what the stage builds on.

    Returns:
        ``{"stage", "version", "config", "resolved", "splits", "inputs", "upstream"}`` (see the module docstring).
    """
    parser.parse()
    config, resolved = {}, {}
    for monai_id in reachable_ids(parser, roots):
        raw = parser.get(monai_id)
        config[_user_id(monai_id)] = raw
        if ConfigExpression.is_expression(raw) and not _builds_components(parser, monai_id):
            value = _plain(parser.get_parsed_content(monai_id))
            if value is not _NOT_PLAIN:
                resolved[_user_id(monai_id)] = value
    datalists = dict(datalists or {})
    files = sorted({os.path.abspath(f) for d in datalists.values() for f in datalist_files(d)})
    root = os.path.commonpath(files) if len(files) > 1 else os.path.dirname(files[0]) if files else ""
    return {
        "stage": stage,
        "version": transrisk_components.__version__,
        "config": config,
        "resolved": resolved,
        "splits": {role: [str(case.get("case_id")) for case in datalist] for role, datalist in datalists.items()},
        "inputs": {os.path.relpath(f, root): file_identity(f) for f in files},
        "upstream": dict(upstream or {}),
    }


def identity(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record without its bookkeeping (outputs, completion, epochs, request): what made the outputs."""
    return {k: v for k, v in record.items() if k not in _BOOKKEEPING}


def digest(record: Mapping[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of :func:`identity` (a cache folder name, an upstream reference)."""
    text = json.dumps(identity(record), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    """The leaves of a raw config value by config id: ``{"a": {"b": 1}}`` under ``x`` -> ``{"x#a#b": 1}`` (lists of
    plain values stay one leaf)."""
    if isinstance(value, Mapping) and value:
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list) and any(isinstance(v, (Mapping, list)) for v in value):
        items = enumerate(value)
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in items:
        flat.update(_leaves(item, f"{prefix}#{key}"))
    return flat


def _flatten(record: Mapping[str, Any]) -> dict[str, Any]:
    """A fingerprint's leaves: ``config.<id>`` and ``resolved.<id>`` by config id, ``inputs.<file>``,
    ``upstream.<name>``, ``version``, ``stage``."""
    flat: dict[str, Any] = {}
    for section, value in record.items():
        if section in ("config", "resolved"):
            for config_id, raw in value.items():
                flat.update(_leaves(raw, f"{section}.{config_id}"))
        elif isinstance(value, Mapping):
            flat.update({f"{section}.{key}": item for key, item in value.items()} or {section: {}})
        else:
            flat[section] = value
    return flat


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def differences(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every differing leaf of two fingerprints (bookkeeping left out), the telling ones
    (version, config, resolved values) before the inputs."""
    if old is None:
        return ["(no fingerprint recorded: the outputs were made by an older version or another tool)"]
    before, after = _flatten(identity(old)), _flatten(identity(new))
    order = ("stage", "version", "config", "resolved", "upstream", "splits", "inputs")

    def rank(key: str) -> tuple[int, str]:
        head = key.split(".", 1)[0]
        return (order.index(head) if head in order else len(order), key)

    return [
        f"{key}: {_short(before.get(key, '<absent>'))} -> {_short(after.get(key, '<absent>'))}"
        for key in sorted(set(before) | set(after), key=rank)
        if before.get(key, "<absent>") != after.get(key, "<absent>")
    ]


def file_digest(path: str | Path) -> str:
    """``sha256=<hex>`` of a file given from outside (a source checkpoint the bundle did not train)."""
    return f"sha256={file_sha256(path)}"
