"""Export of the risk stage's maps for people: per case the map (NIfTI), a PNG overlay, and one CSV row.

CSV columns: ``case_id, mean_risk_foreground, mean_risk_background, leep`` -- the mean risk inside the labelled
foreground (raw label > 0: the tumour for FeTS, brain tissue for iSeg) and outside it within the stage's mask
(the head for ``mask="nonzero"``: the air, where maps are 0, is left out), and the case's LEEP (mean log
transferability under the target set's ``P(y | z)``, over the mask). A mean over no voxels is written as ``nan``:
e.g. the background inside the head of an iSeg case whose every head voxel is labelled tissue.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from transrisk_components.reporting.figures import plot_risk_overlay
from transrisk_components.utils.io import atomic_write, atomic_write_text
from transrisk_components.bundle.io.risk_manifest import RiskManifest

__all__ = ["export_risk_maps"]

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("case_id", "mean_risk_foreground", "mean_risk_background", "leep")


def _volume(path: str) -> np.ndarray:
    """A file's voxels as ``[H, W, D]`` (trailing singleton dimensions dropped)."""
    data = np.asarray(nib.load(path).dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return data


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def export_risk_maps(manifest: str | Path, cases: Sequence[Mapping[str, Any]], output_dir: str | Path, mask: str) -> Path:
    """Write ``<case>_risk.nii.gz``, ``<case>_risk.png`` and ``risk_summary.csv`` under ``output_dir``.

    Args:
        manifest: the risk stage's ``manifest.json`` of ``cases``.
        cases: the target training cases (``{"case_id", "image", "label"}``).
        output_dir: destination folder.
        mask: the maps' statistics mask (``risk#mask``): ``"nonzero"`` counts the background inside the head only.

    Returns:
        The CSV path.

    Raises:
        ValueError: a case's map and image do not share a shape (the message names the case and files).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    maps = RiskManifest(manifest)
    rows = []
    for case in cases:
        case_id = case["case_id"]
        risk_path = maps.map_path(case_id)
        image, label, risk = _volume(case["image"][0]), _volume(case["label"]), _volume(risk_path)
        if not image.shape == label.shape == risk.shape:
            raise ValueError(
                f"{case_id}: image {case['image'][0]} {image.shape}, label {case['label']} {label.shape} "
                f"and risk map {risk_path} {risk.shape} must share one shape"
            )
        map_path = out / f"{case_id}_risk.nii.gz"
        atomic_write(map_path, lambda tmp, src=risk_path: shutil.copyfile(src, tmp), suffix=".nii.gz")
        plot_risk_overlay(image, label, risk, out / f"{case_id}_risk.png", title=case_id)
        foreground = label > 0
        background = ~foreground & (image != 0) if mask == "nonzero" else ~foreground
        rows.append([case_id, _mean(risk[foreground]), _mean(risk[background]), maps.data["cases"][case_id]["leep"]])
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(rows)
    csv_path = atomic_write_text(out / "risk_summary.csv", text.getvalue())
    logger.info("risk maps, overlays and %s written to %s", csv_path.name, out)
    return csv_path
