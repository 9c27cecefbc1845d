"""PNG contact sheet of a dataset, so a person can see what a phantom (or real data) looks like.

One row per subject (the first few), one column per modality plus one with the label overlaid on the
first modality; each row shows the axial slice with the most labelled voxels (through the tumour for
FeTS, through the widest part of the brain for iSeg). Files are found with the dataset's own datalist
and read with nibabel (the library of the documented ``NibabelReader``), reoriented to RAS for display.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after selecting the Agg backend)
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from transrisk_components.data.phantom.io import atomic_file  # noqa: E402
from transrisk_components.data.registry import get_dataset  # noqa: E402

__all__ = ["write_preview"]

#: Overlay colour per label index (transparent background; FeTS: necrotic, edema, enhancing;
#: iSeg: CSF, GM, WM).
_LABEL_COLOURS = ["#00000000", "#e41a1c", "#4daf4a", "#ffd92f"]


def _volume(path: str) -> np.ndarray:
    """``[X, Y, Z]`` float32 voxels in RAS order (trailing singleton dimensions dropped)."""
    image = nib.as_closest_canonical(nib.load(path))
    data = np.asarray(image.dataobj, dtype=np.float32)
    return data.reshape(data.shape[:3])


def _window(slice_2d: np.ndarray) -> tuple[float, float]:
    inside = slice_2d[slice_2d > 0]
    if inside.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(inside, [1, 99])
    return float(low), float(max(high, low + 1e-6))


def write_preview(root: str | PathLike, dataset: str, out_png: str | PathLike, max_subjects: int = 4) -> Path:
    """Write a contact sheet of the first ``max_subjects`` cases of ``dataset`` under ``root``.

    Args:
        root: dataset root that the dataset's ``datalist`` accepts.
        dataset: ``"fets"`` or ``"iseg"``.
        out_png: PNG path (written atomically).
        max_subjects: rows of the sheet.

    Returns:
        ``out_png`` as a ``Path``.
    """
    spec = get_dataset(dataset)
    cases = spec.datalist(root)[:max_subjects]
    label_values = np.asarray(spec.label_values)
    columns = [*spec.modalities, "label"]
    fig, axes = plt.subplots(len(cases), len(columns), figsize=(2.2 * len(columns), 2.3 * len(cases)), squeeze=False)
    for row, case in enumerate(cases):
        images = [_volume(p) for p in case["image"]]
        label = _volume(case["label"]) if case["label"] else np.zeros_like(images[0])
        z = int(np.argmax((label > 0).sum(axis=(0, 1)))) if label.any() else label.shape[2] // 2
        classes = np.searchsorted(label_values, label[:, :, z]).T  # raw values -> 0..n-1 for colouring
        for col, name in enumerate(columns):
            ax = axes[row, col]
            base = (images[0] if name == "label" else images[col])[:, :, z].T
            low, high = _window(base)
            ax.imshow(base, cmap="gray", vmin=low, vmax=high, origin="lower", interpolation="nearest")
            if name == "label":
                colours = ListedColormap(_LABEL_COLOURS[: len(label_values)])
                ax.imshow(classes, cmap=colours, vmin=0, vmax=len(label_values) - 1, alpha=0.6,
                          origin="lower", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name if name != "label" else f"label on {spec.modalities[0]}", fontsize=9)
        site = f" [{case['partition']}]" if case.get("partition") else ""
        axes[row, 0].set_ylabel(f"{case['case_id']}{site}\nz={z}", fontsize=7)
    fig.tight_layout()
    with atomic_file(Path(out_png)) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(out_png)
