"""FeTS2021 (Federated Tumour Segmentation) in the layout the challenge distributes.

Layout::

    MICCAI_FeTS2021_TrainingData/
        FeTS21_Training_001/
            FeTS21_Training_001_flair.nii.gz   (also _t1, _t1ce (or _t1gd), _t2, and _seg when labelled)
        FeTS21_Training_003/ ...               (3-digit ids, gaps allowed)
        partitioning_1.csv, partitioning_2.csv (Subject_ID,Partition_ID; institutions)
        README.txt, other CSVs                 (skipped)

Images are 240x240x155 at 1 mm, co-registered and skull-stripped, read with MONAI's ``NibabelReader``
(see :mod:`transrisk_components.data.iseg` for why one reader is used everywhere). Raw labels:
0 background, 1 necrotic / non-enhancing core, 2 edema, 4 enhancing tumour.
"""

from __future__ import annotations

import csv
import re
from os import PathLike
from pathlib import Path

from transrisk_components.data.labels import TaskLabelTables
from transrisk_components.data.layout import DatasetLayoutError

__all__ = [
    "FETS_LABELS",
    "FETS_LABEL_VALUES",
    "FETS_MODALITIES",
    "FETS_TASKS",
    "fets2021_datalist",
    "fets_raw_labels",
    "fets_task_labels",
    "read_fets_partitions",
]

FETS_MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
FETS_LABEL_VALUES: tuple[int, ...] = (0, 1, 2, 4)
FETS_TASKS: dict[str, tuple[str, ...]] = {
    "multiclass": ("background", "necrotic", "edema", "enhancing"),
    "ET": ("background", "ET"),
    "TC": ("background", "TC"),
    "WT": ("background", "WT"),
    "ED": ("background", "ED"),
    "NCR": ("background", "NCR"),
}

_SUBJECT_DIR = re.compile(r"^FeTS21_Training_\d{3}$")
_MODALITY_ALIASES = {"t1gd": "t1ce"}
#: File-name suffixes tried for each modality, in order (``t1ce`` files are sometimes named ``t1gd``).
_FILE_SUFFIXES = {"t1": ("t1",), "t1ce": ("t1ce", "t1gd"), "t2": ("t2",), "flair": ("flair",), "seg": ("seg",)}
_EXTENSIONS = (".nii.gz", ".nii")

#: raw label -> task class; TC = 1|4, WT = 1|2|4, ET = 4, and the single labels ED = 2 (edema), NCR = 1
#: (necrotic / non-enhancing core) -- the one-label binary tasks of nnU-Net-style FeTS transfer studies.
_TO_TASK: dict[str, dict[int, int]] = {
    "multiclass": {0: 0, 1: 1, 2: 2, 4: 3},
    "ET": {0: 0, 1: 0, 2: 0, 4: 1},
    "TC": {0: 0, 1: 1, 2: 0, 4: 1},
    "WT": {0: 0, 1: 1, 2: 1, 4: 1},
    "ED": {0: 0, 1: 0, 2: 1, 4: 0},
    "NCR": {0: 0, 1: 1, 2: 0, 4: 0},
}
#: task class -> raw label. TC and WT are unions of raw labels, so their foreground maps to 1 as a
#: region marker only (it does not claim the voxel is necrotic core).
_TO_RAW: dict[str, dict[int, int]] = {
    "multiclass": {0: 0, 1: 1, 2: 2, 3: 4},
    "ET": {0: 0, 1: 4},
    "TC": {0: 0, 1: 1},
    "WT": {0: 0, 1: 1},
    "ED": {0: 0, 1: 2},
    "NCR": {0: 0, 1: 1},
}


#: Raw labels <-> task classes; ``fets_task_labels(label, task)`` and ``fets_raw_labels(class_map, task)``.
FETS_LABELS = TaskLabelTables("FeTS", _TO_TASK, _TO_RAW)
fets_task_labels = FETS_LABELS.task_labels
fets_raw_labels = FETS_LABELS.raw_labels


def read_fets_partitions(csv_path: str | PathLike) -> dict[str, str]:
    """Read a FeTS partitioning CSV: subject id -> partition (institution) id.

    Columns are found by name (``Subject_ID``, ``Partition_ID``), so both the FeTS2021 order and the
    FeTS2022 order (``Partition_ID,Subject_ID``) work; CRLF line endings, a UTF-8 BOM and surrounding
    spaces are tolerated. Partition ids are kept as strings (``"01"``).

    Raises:
        FileNotFoundError: the CSV does not exist.
        ValueError: a required column is missing, or a subject appears with two different partitions.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"FeTS partitioning CSV not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {name.strip(): name for name in reader.fieldnames or []}
        missing = [c for c in ("Subject_ID", "Partition_ID") if c not in columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {sorted(columns)}")
        partitions: dict[str, str] = {}
        for row in reader:
            subject = row[columns["Subject_ID"]].strip()
            partition = row[columns["Partition_ID"]].strip()
            if not subject:
                continue
            if partitions.get(subject, partition) != partition:
                raise ValueError(f"{path}: subject {subject} is in partitions {partitions[subject]} and {partition}")
            partitions[subject] = partition
    return partitions


def _find_file(folder: Path, case_id: str, kind: str) -> Path | None:
    for suffix in _FILE_SUFFIXES[kind]:
        for ext in _EXTENSIONS:
            path = folder / f"{case_id}_{suffix}{ext}"
            if path.is_file():
                return path
    return None


def _images_in(folder: Path) -> list[str]:
    """The names of the NIfTI files directly in ``folder``, sorted."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(_EXTENSIONS))


def _holds(folder: Path, shown: int = 6) -> str:
    """What a case folder holds, for an error message: its NIfTI files (the first ``shown``), or that it holds none."""
    names = _images_in(folder)
    if not names:
        return "no NIfTI file"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _normalise_modalities(modalities: tuple[str, ...] | list[str]) -> list[str]:
    names = [_MODALITY_ALIASES.get(m.lower(), m.lower()) for m in modalities]
    unknown = [m for m, n in zip(modalities, names) if n not in FETS_MODALITIES]
    if unknown or not names:
        raise ValueError(f"unknown FeTS modalities {unknown or '(none given)'}; valid: {list(FETS_MODALITIES)}")
    return names


def _resolve_csv(root: Path, partition_csv: str | PathLike) -> Path:
    path = Path(partition_csv)
    if not path.is_absolute() and not path.exists() and (root / path).exists():
        return root / path
    return path


def fets2021_datalist(
    root: str | PathLike,
    modalities: tuple[str, ...] | list[str] = FETS_MODALITIES,
    partition_csv: str | PathLike | None = None,
) -> list[dict]:
    """List the FeTS2021 subjects under ``root``, one dict per subject, sorted by id.

    Args:
        root: the folder holding ``FeTS21_Training_###`` subject folders
            (e.g. ``MICCAI_FeTS2021_TrainingData``). Other files, and folders without NIfTI files, are skipped; a
            folder of NIfTI files whose name does not match is an error (a misnamed case).
        modalities: which images, in channel order; names from ``t1, t1ce, t2, flair`` (``t1gd`` is an
            alias of ``t1ce``), case-insensitive.
        partition_csv: optional partitioning CSV (``partitioning_1.csv`` / ``partitioning_2.csv``): a
            path, or a file name inside ``root``. Subjects absent from it get partition ``None``.

    Returns:
        ``[{"case_id": "FeTS21_Training_001", "image": [abs path per modality], "label": abs path of
        ``_seg`` or None, "partition": "01" or None}, ...]``

    Raises:
        FileNotFoundError: ``root`` or the CSV is missing.
        DatasetLayoutError: in one error listing every problem (and holding the complete cases), a subject lacks a
            requested modality (named, with the files its folder holds) or a misnamed folder holds NIfTI files.
        ValueError: unknown modality, or ``root`` holds no ``FeTS21_Training_###`` folders.
    """
    names = _normalise_modalities(modalities)
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"FeTS2021 root folder not found: {root}")
    partitions = read_fets_partitions(_resolve_csv(root, partition_csv)) if partition_csv is not None else {}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and _SUBJECT_DIR.match(p.name))
    problems = [
        f"{folder.name}: a folder that does not match the FeTS naming FeTS21_Training_### holds {_holds(folder)}: "
        "rename it to its case id (as it is, it would be left out)"
        for folder in sorted(root.iterdir())
        if folder.is_dir() and not _SUBJECT_DIR.match(folder.name) and _images_in(folder)
    ]
    if not folders and not problems:
        raise ValueError(f"no FeTS21_Training_### subject folders in {root}")
    cases = []
    for folder in folders:
        case_id = folder.name
        paths = {name: _find_file(folder, case_id, name) for name in names}
        missing = [f"{case_id}_{name}.nii.gz" for name, path in paths.items() if path is None]
        if missing:
            problems.append(f"{case_id}: missing {', '.join(missing)}; the folder holds {_holds(folder)}")
            continue
        label = _find_file(folder, case_id, "seg")
        cases.append(
            {
                "case_id": case_id,
                "image": [str(paths[name]) for name in names],
                "label": None if label is None else str(label),
                "partition": partitions.get(case_id),
            }
        )
    if problems:
        raise DatasetLayoutError(f"{len(problems)} problem(s) with the FeTS2021 folder {root}:\n  " + "\n  ".join(problems),
                                 problems, cases)
    return cases
