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
from pathlib import Path

import nibabel as nib
import numpy as np

from transrisk_components.reporting.figures import plot_risk_overlay
from transrisk_components.utils.io import atomic_write, atomic_write_text
from transrisk_components.bundle.stages.risk import RiskStage

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


def export_risk_maps(stage: RiskStage, output_dir: str) -> Path:
    """Write ``<case>_risk.nii.gz``, ``<case>_risk.png`` and ``risk_summary.csv`` under ``output_dir``.

    Args:
        stage: the risk stage; its cached maps are reused (computed first when missing).
        output_dir: destination folder.

    Returns:
        The CSV path.

    Raises:
        ValueError: a case's map and image do not share a shape (the message names the case and files).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = stage.run()
    rows = []
    for case in stage.cases:
        record = manifest["cases"][case["case_id"]]
        risk_path = stage.cache_root / manifest["key"] / record["risk"]
        image, label, risk = _volume(case["image"][0]), _volume(case["label"]), _volume(str(risk_path))
        if not image.shape == label.shape == risk.shape:
            raise ValueError(
                f"{case['case_id']}: image {case['image'][0]} {image.shape}, label {case['label']} {label.shape} "
                f"and risk map {risk_path} {risk.shape} must share one shape"
            )
        map_path = out / f"{case['case_id']}_risk.nii.gz"
        atomic_write(map_path, lambda tmp, src=risk_path: shutil.copyfile(src, tmp), suffix=".nii.gz")
        plot_risk_overlay(image, label, risk, out / f"{case['case_id']}_risk.png", title=case["case_id"])
        foreground = label > 0
        background = ~foreground & (image != 0) if stage.options.mask == "nonzero" else ~foreground
        rows.append([case["case_id"], _mean(risk[foreground]), _mean(risk[background]), record["leep"]])
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(rows)
    csv_path = atomic_write_text(out / "risk_summary.csv", text.getvalue())
    logger.info("risk maps, overlays and %s written to %s", csv_path.name, out)
    return csv_path
