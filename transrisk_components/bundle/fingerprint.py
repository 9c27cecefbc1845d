"""Stage fingerprints: every stage output records what made it, and is reused only when that still holds.

A stage (source training, risk maps, fine-tuning) is described by a :class:`StageFingerprint`:

- ``settings``: the resolved config values that determine the output, listed explicitly in the bundle JSON
  (``fingerprint#source``, ``fingerprint#finetune``, ...), e.g. dataset, modality, task, split case ids, seed,
  network, patch size, epochs, learning rate, loss and risk options, amp; a setting added later, at the value
  that makes the outputs of before (its entry in ``defaults``), is left out, so those outputs stay valid;
- ``inputs``: the identity (size and modification time) of every image and label file of its datalists, by
  path relative to their common folder (whose location is a setting, ``dataset_dir``);
- ``upstream``: the SHA-256 of the files earlier stages wrote and this one builds on (the source checkpoint);
  a keyed upstream output (the risk-map cache) enters through its key in ``settings``;
- the package version.

For a stage with fixed output paths (``models/source.pt``, ``models/model.pt``) the fingerprint is written as
``<stage>.fingerprint.json`` next to them before the stage starts, with the list of those outputs (``"outputs"``,
relative to the record's folder). :meth:`StageFingerprint.prepare` then decides, before anything is trained:

- no outputs yet: start (and record the fingerprint);
- outputs present and the recorded fingerprint equals the current one: reuse them, or resume the run;
- outputs present that no fingerprint record of ours names (:func:`named_by_a_record`: files the bundle did not
  make -- a checkpoint the user brought, a Model Zoo download's ``models/model.pt``): stop with
  :class:`ForeignOutputError`. Such files are never deleted or changed, whatever ``overwrite`` says;
- outputs present, all of them ours, and the fingerprint differs: stop with :class:`StaleOutputError`,
  naming each differing key with its old and new value, and the two ways on: ``--overwrite true`` (delete
  this stage's outputs and redo it in place) or another output folder (``--bundle_root``).

A stage whose output folder holds many variants (the risk-map cache) uses :meth:`StageFingerprint.key`
as its folder name instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import transrisk_components
from transrisk_components.utils.distributed import barrier, is_rank0
from transrisk_components.utils.io import atomic_write_text, file_sha256

__all__ = ["ForeignOutputError", "RECORD_SUFFIX", "StageFingerprint", "StaleOutputError", "datalist_files", "named_by_a_record"]

logger = logging.getLogger(__name__)

_FILE_KEYS = ("image", "label")
_MAX_LISTED = 12
#: File name ending of a stage's fingerprint record (``<stage>.fingerprint.json``, ``source.fingerprint.json``).
RECORD_SUFFIX = ".fingerprint.json"
#: Key of a record that lists the outputs it names (records written before 0.5.0 have none).
_OUTPUTS = "outputs"


class StaleOutputError(RuntimeError):
    """A stage's outputs on disk were made with other settings or inputs than the current run's."""


class ForeignOutputError(StaleOutputError):
    """Files sit where a stage would write, and no fingerprint record of ours names them: the bundle did not make
    them, so it never deletes or changes them."""


def _read_record(path: Path) -> dict[str, Any] | None:
    """A fingerprint record of ours (``stage``, ``version`` and ``settings`` keys), or ``None``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and {"stage", "version", "settings"} <= set(data) else None


def _names(record_path: Path, record: Mapping[str, Any], path: Path) -> bool:
    """Whether ``record`` (read from ``record_path``) names ``path``: one of its outputs, or inside an output folder.

    A record written before 0.5.0 lists no outputs; it is taken to name everything in its own folder (those versions
    wrote records only beside their own outputs).
    """
    folder = record_path.resolve().parent
    listed = record.get(_OUTPUTS)
    if listed is None:
        return folder == path or folder in path.parents
    for name in listed:
        output = (folder / name).resolve()
        if output == path or output in path.parents:
            return True
    return False


def named_by_a_record(path: str | os.PathLike, records: Sequence[str | os.PathLike] = ()) -> bool:
    """Whether the bundle made ``path``: a fingerprint record of ours names it.

    The records looked at are the ``*.fingerprint.json`` files in ``path``'s own folder (records sit beside their
    outputs) and ``records``. A file no record names -- a checkpoint the user brought, a Model Zoo download's
    ``models/model.pt`` -- is not the bundle's, and no stage may delete or change it.
    """
    target = Path(path).resolve()
    candidates = {p.resolve() for p in target.parent.glob(f"*{RECORD_SUFFIX}")} | {Path(r).resolve() for r in records}
    for record_path in sorted(candidates):
        record = _read_record(record_path) if record_path.is_file() else None
        if record is not None and _names(record_path, record, target):
            return True
    return False


def _identity(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record without its outputs list: what made the outputs, comparable with :meth:`StageFingerprint.current`."""
    return {k: v for k, v in record.items() if k != _OUTPUTS}


def datalist_files(datalist: Sequence[Mapping[str, Any]]) -> list[str]:
    """The image and label file paths of a datalist (``image`` may be a list, one path per channel)."""
    files: list[str] = []
    for case in datalist:
        for key in _FILE_KEYS:
            value = case.get(key)
            if value is None:
                continue
            files.extend(str(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return files


def _file_identity(path: str) -> str:
    """``"size=<bytes> mtime_ns=<ns>"`` of a file, or ``"missing"``."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return "missing"
    return f"size={stat.st_size} mtime_ns={stat.st_mtime_ns}"


def _plain(value: Any, name: str = "setting") -> Any:
    """``value`` as JSON data that is the same in every process that has the same setting.

    Tuples become lists; a ``torch.nn.Module`` becomes ``"<class>, <n> parameters, architecture <sha>"`` (the
    SHA-256 of its ``repr``: layers and their arguments); a callable without arguments is called (a value known
    only once an earlier stage ran, e.g. ``risk_stage.cache_key``); devices and dtypes become their ``str``.

    Raises:
        TypeError: an object whose text names its memory address (it would differ in every run).
    """
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{name}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, name) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.nn.Module):
        digest = hashlib.sha256(repr(value).encode()).hexdigest()[:12]
        count = sum(p.numel() for p in value.parameters())
        return f"{type(value).__name__}, {count} parameters, architecture {digest}"
    if hasattr(value, "tolist"):
        return _plain(value.tolist(), name)
    if callable(value) and not isinstance(value, type):
        return _plain(value(), name)
    text = str(value)
    if " at 0x" in text:
        raise TypeError(f"fingerprint {name}: {type(value).__name__} has no stable description ({text}); list its settings instead")
    return text


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"settings": {"seed": 0}}`` -> ``{"settings.seed": 0}`` (lists stay values, empty mappings vanish)."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):  # an empty mapping adds no key: its absent entries show one by one
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


class StageFingerprint:
    """What determines one stage's outputs, and the check that guards them.

    Args:
        stage: stage name used in messages (``"source"``, ``"risk"``, ``"finetune"``).
        settings: the resolved settings that determine the output (JSON-able after ``str`` of odd values).
        datalists: datalists whose image/label files are inputs (their size and mtime are recorded).
        upstream: files of earlier stages this stage builds on, by name (their SHA-256 is recorded); ``None``
            entries are left out (e.g. no source checkpoint for a randomly initialised network).
        record: the JSON file holding the fingerprint of the outputs and naming them (``None`` for a keyed cache).
        outputs: files and folders the stage writes (deleted when ``overwrite`` redoes the stage, if a record of
            ours names them; others are never touched).
        overwrite: redo the stage in place when its outputs were made with another fingerprint.
        defaults: settings that are left out of the fingerprint while they have this value: an option added to a
            stage after outputs existed, at the value that reproduces those outputs (e.g. the risk stage's
            ``{"probabilities": "float32"}``), so that they stay valid.
    """

    def __init__(
        self,
        stage: str,
        settings: Mapping[str, Any],
        datalists: Sequence[Sequence[Mapping[str, Any]]] = (),
        upstream: Mapping[str, str | os.PathLike | None] | None = None,
        record: str | os.PathLike | None = None,
        outputs: Sequence[str | os.PathLike] = (),
        overwrite: bool = False,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.stage = stage
        self.settings = dict(settings)
        self.datalists = [list(d) for d in datalists]
        self.upstream = dict(upstream or {})
        self.record = Path(record) if record is not None else None
        self.outputs = [Path(p) for p in outputs]
        self.overwrite = overwrite
        self.defaults = _plain(dict(defaults or {}), "defaults")
        self._current: dict[str, Any] | None = None

    def current(self) -> dict[str, Any]:
        """The fingerprint of the current run: ``{"stage", "version", "settings", "upstream", "inputs"}``."""
        if self._current is None:
            upstream = {}
            for name, path in self.upstream.items():
                if path is None:
                    continue
                if not Path(path).is_file():
                    raise FileNotFoundError(f"the {self.stage} stage builds on {name} {path}, which does not exist")
                upstream[name] = f"sha256={file_sha256(path)}"
            files = sorted({os.path.abspath(f) for d in self.datalists for f in datalist_files(d)})
            root = os.path.commonpath(files) if len(files) > 1 else os.path.dirname(files[0]) if files else ""
            settings = _plain(self.settings, "settings")
            for name, value in self.defaults.items():
                if name in settings and settings[name] == value:
                    del settings[name]
            self._current = {
                "stage": self.stage,
                "version": transrisk_components.__version__,
                "settings": settings,
                "upstream": upstream,
                "inputs": {os.path.relpath(f, root): _file_identity(f) for f in files},
            }
        return self._current

    def key(self) -> str:
        """First 16 hex digits of the SHA-256 of :meth:`current` (a cache folder name)."""
        text = json.dumps(self.current(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def recorded(self) -> dict[str, Any] | None:
        """The fingerprint stored next to the outputs (with the outputs it names), or ``None``."""
        if self.record is None or not self.record.is_file():
            return None
        return _read_record(self.record)

    def owns(self, path: str | os.PathLike) -> bool:
        """Whether a fingerprint record of ours (this stage's, or one beside ``path``) names ``path``."""
        return named_by_a_record(path, [self.record] if self.record is not None else [])

    def differences(self, old: Mapping[str, Any] | None) -> list[str]:
        """``"key: old -> new"`` lines for every differing (flattened) key of ``old`` and :meth:`current` (the
        outputs a record lists are where, not what, and are left out)."""
        if old is None:
            return ["(no fingerprint recorded: the outputs were made by an older version or another tool)"]
        before, after = _flatten(_identity(old)), _flatten(self.current())
        lines = []
        order = ("stage", "version", "settings", "upstream", "inputs")  # the telling differences first
        for key in sorted(set(before) | set(after), key=lambda k: (order.index(k.split(".")[0]) if k.split(".")[0] in order else len(order), k)):
            if before.get(key, "<absent>") != after.get(key, "<absent>"):
                lines.append(f"{key}: {_short(before.get(key, '<absent>'))} -> {_short(after.get(key, '<absent>'))}")
        return lines

    def prepare(self) -> bool:
        """Check the outputs against the current fingerprint before the stage runs.

        Returns:
            ``True`` when outputs made with this fingerprint exist (reuse them / resume the run), ``False``
            when the stage starts from nothing (its fingerprint is then recorded).

        Raises:
            ForeignOutputError: outputs exist that no fingerprint record of ours names (whatever ``overwrite`` says).
            StaleOutputError: outputs exist that another fingerprint made, and ``overwrite`` is false.
            ValueError: ``overwrite`` would delete a file this stage builds on (one of its ``upstream`` files).
        """
        if self.record is None:
            raise ValueError(f"stage {self.stage!r} has no fingerprint record file: use key() for keyed caches")
        # an empty folder is no output (ignite's savers create theirs when the trainer is built)
        present = [p for p in self.outputs if p.is_file() or (p.is_dir() and any(p.iterdir()))]
        old = self.recorded()
        if old is not None and _identity(old) == self.current():
            if present:
                logger.info("%s stage: outputs match their fingerprint %s", self.stage, self.record)
            return bool(present)
        foreign = [p for p in present if not self.owns(p)]
        if foreign:
            raise ForeignOutputError(self._foreign_message(foreign))
        if present:
            differences = self.differences(old)
            if not self.overwrite:
                raise StaleOutputError(self._message(present, differences))
            self._refuse_deleting_upstream(present)
            logger.warning(
                "%s stage: --overwrite true: deleting %s made with other settings (%s)",
                self.stage,
                ", ".join(map(str, present)),
                "; ".join(differences[:_MAX_LISTED]),
            )
        barrier()  # every rank has looked before rank 0 deletes
        if is_rank0():
            for path in present:  # a folder is emptied, not removed: a saver built with the trainer writes into it
                for item in path.iterdir() if path.is_dir() else [path]:
                    shutil.rmtree(item) if item.is_dir() else item.unlink()
            folder = self.record.resolve().parent
            names = [os.path.relpath(p.resolve(), folder) for p in self.outputs]
            atomic_write_text(self.record, json.dumps({**self.current(), _OUTPUTS: names}, indent=2) + "\n")
        barrier()
        return False

    def _refuse_deleting_upstream(self, present: list[Path]) -> None:
        """Stop before ``overwrite`` deletes a file this stage builds on (e.g. a source checkpoint that is also
        the fine-tuning's ``model.pt``)."""
        for name, path in self.upstream.items():
            if path is None:
                continue
            built_on = Path(path).resolve()
            for output in present:
                if output.resolve() == built_on or output.resolve() in built_on.parents:
                    raise ValueError(
                        f"the {self.stage} stage builds on {name} {path}, which is also one of its outputs "
                        f"({output}): --overwrite would delete it. Copy it elsewhere and point {name} there."
                    )

    def listed_differences(self, differences: list[str]) -> str:
        """The first differences (see :meth:`differences`), one indented line each, and how many more there are."""
        listed = differences[:_MAX_LISTED]
        if len(differences) > len(listed):
            listed.append(f"... and {len(differences) - len(listed)} more (see {self.record or 'the recorded fingerprint'})")
        return "\n  ".join(listed)

    def _foreign_message(self, foreign: list[Path]) -> str:
        return (
            f"the {self.stage} stage would write {', '.join(map(str, foreign))}, which no fingerprint record of this "
            f"bundle names: files the bundle did not make (your own, or a downloaded model) are never deleted or "
            f"changed, whatever --overwrite says. Move them elsewhere yourself, or pass another --bundle_root, to run "
            f"the {self.stage} stage."
        )

    def _message(self, present: list[Path], differences: list[str]) -> str:
        lines = self.listed_differences(differences)
        return (
            f"the {self.stage} stage's outputs ({', '.join(map(str, present))}) were made with other settings or "
            f"inputs than this run's, so they are not reused. Differences (recorded -> now):\n  {lines}\n"
            f"Either pass --overwrite true to redo the {self.stage} stage in place (its outputs are deleted; "
            f"stages whose fingerprint still matches are kept), or pass another --bundle_root to keep both."
        )
