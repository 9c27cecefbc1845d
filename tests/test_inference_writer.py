"""Raw label values and grid/affine preservation of written predictions, NIfTI and Analyze 7.5."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged

from transrisk_components.bundle.io.inference import (
    RawLabels,
    RawLabelsd,
    prediction_saver,
    raw_label_values,
    to_analyze_orientation,
)


@pytest.mark.parametrize(
    ("dataset", "task", "values"),
    [
        ("fets", "multiclass", (0, 1, 2, 4)),
        ("fets", "ET", (0, 4)),
        ("fets", "TC", (0, 1)),
        ("fets", "WT", (0, 1)),
        ("iseg", "multiclass", (0, 10, 150, 250)),
        ("iseg", "CSF", (0, 10)),
        ("iseg", "GM", (0, 150)),
        ("iseg", "WM", (0, 250)),
    ],
)
def test_raw_label_values(dataset: str, task: str, values: tuple[int, ...]) -> None:
    assert raw_label_values(dataset, task) == values


def test_raw_labels_keeps_metadata_and_refuses_non_classes() -> None:
    affine = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0]))
    class_map = MetaTensor(torch.tensor([[[[0.0, 1.0, 2.0, 3.0]]]]), affine=affine)
    raw = RawLabelsd(keys="pred", dataset="iseg", task="multiclass")({"pred": class_map})["pred"]
    assert isinstance(raw, MetaTensor)
    assert raw.flatten().tolist() == [0, 10, 150, 250]
    assert torch.equal(raw.affine, affine.double())
    with pytest.raises(ValueError, match="AsDiscreted"):
        RawLabels("fets", "multiclass")(torch.tensor([0.0, 4.0]))  # a raw label, not a class
    with pytest.raises(ValueError, match="unknown fets task"):
        RawLabels("fets", "CSF")


def _class_map(shape: tuple[int, int, int]) -> np.ndarray:
    """Asymmetric class map [X, Y, Z] with classes 0..3, so flips and transposes would show."""
    classes = np.zeros(shape, dtype=np.uint8)
    classes[1:3, 2:4, 1:3] = 3
    classes[0, 0, 0] = 1
    classes[-1, -1, -1] = 2
    classes[-1, 0, 1] = 1
    return classes


def _predict(image_path: Path, classes: np.ndarray, dataset: str) -> dict:
    """Load the image as a bundle would, and attach a class-map prediction carrying its metadata."""
    loaded = LoadImaged(keys="image", reader="NibabelReader", ensure_channel_first=True)({"image": str(image_path)})
    pred = MetaTensor(torch.as_tensor(classes[None]).float(), meta=loaded["image"].meta)
    return RawLabelsd(keys="pred", dataset=dataset, task="multiclass")({"pred": pred})


def test_nifti_round_trip_keeps_affine_and_raw_values(tmp_path: Path) -> None:
    classes = _class_map((6, 7, 5))
    affine = np.array([[0.0, -1.2, 0.0, 10.0], [0.9, 0.0, 0.0, -20.0], [0.0, 0.0, 2.0, 5.5], [0.0, 0.0, 0.0, 1.0]])
    intensities = np.random.default_rng(0).random(classes.shape, dtype=np.float32)
    nib.save(nib.Nifti1Image(intensities, affine), tmp_path / "case1_flair.nii.gz")
    saver = prediction_saver(keys="pred", output_dir=tmp_path / "pred", separate_folder=False, print_log=False)
    saver(_predict(tmp_path / "case1_flair.nii.gz", classes, "fets"))
    written = nib.load(tmp_path / "pred" / "case1_flair_seg.nii.gz")
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), np.array([0, 1, 2, 4])[classes])


def test_analyze_round_trip_matches_an_analyze_input(tmp_path: Path) -> None:
    classes = _class_map((6, 7, 5))
    intensities = np.random.default_rng(0).random(classes.shape, dtype=np.float32)
    image = nib.AnalyzeImage(intensities, np.diag([-1.2, 1.5, 2.0, 1.0]))
    nib.save(image, tmp_path / "subject-1-T2.hdr")
    input_affine = nib.load(tmp_path / "subject-1-T2.hdr").affine
    saver = prediction_saver(
        keys="pred", output_dir=tmp_path / "pred", output_format="analyze", separate_folder=False, print_log=False
    )
    saver(_predict(tmp_path / "subject-1-T2.hdr", classes, "iseg"))
    header = tmp_path / "pred" / "subject-1-T2_seg.hdr"
    assert header.with_suffix(".img").is_file()
    raw_header = header.read_bytes()
    assert len(raw_header) == 348 and raw_header[344:347] not in (b"ni1", b"n+1")  # Analyze, not a NIfTI pair
    written = nib.load(header)
    np.testing.assert_allclose(written.affine, input_affine, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), np.array([0, 10, 150, 250])[classes])


def test_analyze_writer_reorients_instead_of_mirroring(tmp_path: Path) -> None:
    classes = _class_map((6, 7, 5))
    ras = np.diag([2.0, 3.0, 4.0, 1.0])  # x runs to the right: Analyze (x to the left) needs a flip
    pred = RawLabels("fets", "multiclass")(MetaTensor(torch.as_tensor(classes[None]), affine=torch.as_tensor(ras)))
    saver = prediction_saver(
        keys="pred", output_dir=tmp_path, output_format="analyze", separate_folder=False, print_log=False
    )
    pred.meta["filename_or_obj"] = "case2.nii.gz"
    saver({"pred": pred})
    written = nib.load(tmp_path / "case2_seg.hdr")
    assert written.header.get_zooms()[:3] == (2.0, 3.0, 4.0)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), np.array([0, 1, 2, 4])[classes][::-1])


def test_oblique_affine_cannot_be_analyze() -> None:
    angle = np.deg2rad(20)
    oblique = np.eye(4)
    oblique[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    with pytest.raises(ValueError, match="oblique"):
        to_analyze_orientation(np.zeros((3, 3, 3)), oblique)


def test_unknown_output_format() -> None:
    with pytest.raises(ValueError, match="output_format"):
        prediction_saver(keys="pred", output_dir="unused", output_format="mgz")
