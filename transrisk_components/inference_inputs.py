"""The cases an inference run predicts: a folder of images, a datalist JSON, or a split of ``splits.json``.

Images are NIfTI (``.nii.gz``, ``.nii``) or Analyze 7.5 / NIfTI pairs, named by their ``.hdr`` header (the
``.img`` half sits next to it and is not listed separately).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

__all__ = ["IMAGE_EXTENSIONS", "image_stem", "inference_datalist"]

#: Image file endings a folder is searched for; a ``.hdr`` stands for its ``.hdr``/``.img`` pair.
IMAGE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".hdr")


def image_stem(name: str) -> str:
    """A file name without its image ending: ``"subject-9-T2.hdr"`` -> ``"subject-9-T2"``, ``"a.nii.gz"`` -> ``"a"``."""
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _entry(case_id: str, image: str | list[str]) -> dict:
    """``{"case_id", "image"}`` with a single-file image as a plain path (the saver names outputs after it)."""
    if isinstance(image, (list, tuple)):
        if len(image) != 1:
            raise ValueError(f"{case_id}: inference takes one image per case, got {len(image)}: {image}")
        image = image[0]
    return {"case_id": case_id, "image": str(image)}


def inference_datalist(source: str, split: str = "target_test", pattern: str = "*") -> list[dict]:
    """Cases to predict, ``[{"case_id", "image": path}]``.

    Args:
        source: a folder (every ``*.nii.gz`` / ``*.nii`` / ``*.hdr`` image in it whose name matches
            ``pattern``, sorted), a JSON list of ``{"image", ...}`` dicts, or a ``splits.json`` written by
            :class:`~transrisk_components.scenario.Scenario`.
        split: which split of a ``splits.json`` to predict.
        pattern: shell-style file-name filter for a folder (case-sensitive), e.g. ``"*-T2.hdr"`` to predict
            only the T2 images of an iSeg-2019 folder that also holds T1 images and labels; ignored for JSON.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: a folder without matching images, an unknown split, or an entry without ``image``.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"inference input not found: {path}")
    if path.is_dir():
        images = sorted(
            p
            for p in path.iterdir()
            if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS) and fnmatch.fnmatchcase(p.name, pattern)
        )
        if not images:
            raise ValueError(
                f"no images ({', '.join('*' + e for e in IMAGE_EXTENSIONS)}) matching {pattern!r} in {path}"
            )
        return [_entry(image_stem(p.name), str(p.resolve())) for p in images]
    content = json.loads(path.read_text())
    if isinstance(content, dict) and "splits" in content:
        if split not in content["splits"]:
            raise ValueError(f"{path} has no split {split!r}; splits: {sorted(content['splits'])}")
        content = content["splits"][split]
    cases = []
    for index, case in enumerate(content):
        if "image" not in case:
            raise ValueError(f"{path}: entry {index} has no 'image'")
        cases.append(_entry(str(case.get("case_id", f"case_{index:03d}")), case["image"]))
    return cases
