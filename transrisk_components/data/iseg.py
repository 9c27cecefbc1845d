"""iSeg-2019 (6-month infant brain MRI) in the layout the challenge distributes.

Layout: a flat folder of Analyze 7.5 pairs, sometimes nested one level deeper after unzipping::

    iSeg-2019-Training/
        subject-1-T1.hdr, subject-1-T1.img, subject-1-T2.hdr/.img, subject-1-label.hdr/.img
        ...                                  (N not zero-padded; 1-10 training, with labels;
                                              11-23 validation and 24-39 testing, without)

Volumes are 144x192x256 at 1 mm; headers may carry a trailing singleton 4th dimension. Raw labels:
0 background, 10 CSF, 150 grey matter, 250 white matter.

Reader: image **and** label are read with MONAI's ``NibabelReader`` (``LoadImaged(..., reader=
"NibabelReader")``), for every dataset in transrisk. Analyze 7.5 headers carry no orientation, so
each library guesses: nibabel assumes radiological LAS and keeps the singleton 4th dimension (MONAI
treats it as a channel), ITK reports LPS with an identity direction and drops it. The voxels agree
once transposed, the affines do not, so mixing readers misaligns image, label and risk map. nibabel
is chosen because (1) it reads FeTS NIfTI and iSeg Analyze alike, (2) the risk maps are written as
NIfTI with the affine the reader returned, which nibabel round-trips exactly, and (3) the phantom
writes true Analyze 7.5 with nibabel's ``AnalyzeImage``, so generator and reader share one convention.
``NibabelReader`` does not claim ``.hdr`` when MONAI picks readers by suffix, so name it explicitly.
"""

from __future__ import annotations

import re
from os import PathLike
from pathlib import Path

from transrisk_components.data.labels import TaskLabelTables
from transrisk_components.data.layout import DatasetLayoutError

__all__ = [
    "ISEG_LABELS",
    "ISEG_LABEL_VALUES",
    "ISEG_MODALITIES",
    "ISEG_TASKS",
    "iseg2019_datalist",
    "iseg_raw_labels",
    "iseg_task_labels",
]

ISEG_MODALITIES: tuple[str, ...] = ("T1", "T2")
ISEG_LABEL_VALUES: tuple[int, ...] = (0, 10, 150, 250)
ISEG_TASKS: dict[str, tuple[str, ...]] = {
    "multiclass": ("background", "CSF", "GM", "WM"),
    "CSF": ("background", "CSF"),
    "GM": ("background", "GM"),
    "WM": ("background", "WM"),
}

_FILE = re.compile(r"^subject-(\d+)-(T1|T2|label)\.hdr$", re.IGNORECASE)
_CANONICAL = {"t1": "T1", "t2": "T2", "label": "label"}
_TISSUE_VALUE = {"CSF": 10, "GM": 150, "WM": 250}

_TO_TASK: dict[str, dict[int, int]] = {
    "multiclass": {0: 0, 10: 1, 150: 2, 250: 3},
    **{t: {v: int(v == raw) for v in ISEG_LABEL_VALUES} for t, raw in _TISSUE_VALUE.items()},
}
_TO_RAW: dict[str, dict[int, int]] = {
    "multiclass": {0: 0, 1: 10, 2: 150, 3: 250},
    **{t: {0: 0, 1: raw} for t, raw in _TISSUE_VALUE.items()},
}


#: Raw labels <-> task classes; ``iseg_task_labels(label, task)`` and ``iseg_raw_labels(class_map, task)``.
ISEG_LABELS = TaskLabelTables("iSeg", _TO_TASK, _TO_RAW)
iseg_task_labels = ISEG_LABELS.task_labels
iseg_raw_labels = ISEG_LABELS.raw_labels


def _subject_files(folder: Path) -> dict[int, dict[str, Path]]:
    """``{N: {"T1": hdr, "T2": hdr, "label": hdr}}`` for the Analyze headers directly in ``folder``."""
    found: dict[int, dict[str, Path]] = {}
    for path in folder.iterdir():
        match = _FILE.match(path.name)
        if match and path.is_file():
            found.setdefault(int(match.group(1)), {})[_CANONICAL[match.group(2).lower()]] = path
    return found


def _misnamed(folder: Path) -> list[str]:
    """Analyze headers directly in ``folder`` whose names do not follow ``subject-<N>-<T1|T2|label>.hdr``."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".hdr" and not _FILE.match(p.name))


def _collect(root: Path) -> tuple[dict[int, dict[str, Path]], list[Path]]:
    """Subject files in ``root``, or else in its direct subfolders (an unzipped archive nests one level), and the
    folders they were looked for in."""
    found = _subject_files(root)
    if found:
        return found, [root]
    subfolders = sorted(p for p in root.iterdir() if p.is_dir())
    for sub in subfolders:
        for n, files in _subject_files(sub).items():
            if n in found:
                first = next(iter(found[n].values())).parent
                raise ValueError(f"subject-{n} appears in two folders: {first} and {sub}")
            found[n] = files
    return found, [root, *subfolders]


def _normalise_modalities(modalities: tuple[str, ...] | list[str]) -> list[str]:
    names = [m.upper() for m in modalities]
    unknown = [m for m, n in zip(modalities, names) if n not in ISEG_MODALITIES]
    if unknown or not names:
        raise ValueError(f"unknown iSeg modalities {unknown or '(none given)'}; valid: {list(ISEG_MODALITIES)}")
    return names


def iseg2019_datalist(root: str | PathLike, modalities: tuple[str, ...] | list[str] = ISEG_MODALITIES) -> list[dict]:
    """List the iSeg-2019 subjects under ``root``, one dict per subject, sorted by N numerically.

    Args:
        root: the folder holding ``subject-<N>-T1.hdr`` etc. (e.g. ``iSeg-2019-Training``), or a folder
            whose direct subfolders hold them (nested archive, or training + validation side by side).
        modalities: which images, in channel order: ``"T1"``, ``"T2"`` (case-insensitive).

    Returns:
        ``[{"case_id": "subject-1", "image": [abs path of each modality's .hdr], "label": abs path of
        ``subject-<N>-label.hdr`` or None (validation / testing subjects)}, ...]``. The ``.hdr`` path
        stands for the pair; ``NibabelReader`` finds the ``.img`` next to it.

    Raises:
        FileNotFoundError: ``root`` is missing.
        DatasetLayoutError: in one error listing every problem (and holding the complete cases), a subject lacks a
            requested modality or the ``.img`` half of a pair (named, with the subject's files that are there), or
            an Analyze header is misnamed.
        ValueError: unknown modality, no subjects found, or one subject number in two subfolders.
    """
    names = _normalise_modalities(modalities)
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"iSeg-2019 root folder not found: {root}")
    found, folders = _collect(root)
    problems = [f"{folder / name}: an Analyze header not named subject-<N>-<T1|T2|label>.hdr: rename it (as it is, it "
                "would be left out)" for folder in folders for name in _misnamed(folder)]
    if not found and not problems:
        raise ValueError(f"no iSeg-2019 subjects (subject-<N>-T1.hdr ...) in {root} or its direct subfolders")
    cases = []
    for n in sorted(found):
        files, case_id = found[n], f"subject-{n}"
        folder = next(iter(files.values())).parent
        wanted = [*names, *(["label"] if "label" in files else [])]
        missing = [f"subject-{n}-{name}.hdr" for name in names if name not in files]
        missing += [f"{files[name].with_suffix('.img').name} (the data half of {files[name].name})"
                    for name in wanted if name in files and not files[name].with_suffix(".img").is_file()]
        if missing:
            held = sorted(p.name for p in folder.iterdir() if p.name.startswith(f"subject-{n}-"))
            problems.append(f"{case_id}: missing {', '.join(missing)} in {folder}; it holds {', '.join(held) or 'nothing of it'}")
            continue
        label = str(files["label"]) if "label" in files else None
        cases.append({"case_id": case_id, "image": [str(files[name]) for name in names], "label": label})
    if problems:
        raise DatasetLayoutError(f"{len(problems)} problem(s) with the iSeg-2019 folder {root}:\n  " + "\n  ".join(problems),
                                 problems, cases)
    return cases
