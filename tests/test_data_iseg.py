"""iSeg-2019 datalist and task labels, on phantom output (true Analyze 7.5 pairs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImaged

from transrisk_components.data import get_dataset, iseg2019_datalist, iseg_raw_labels, iseg_task_labels, num_classes


def _copy_subject(root: Path, dest: Path, n: int) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for path in root.glob(f"subject-{n}-*"):
        shutil.copy(path, dest / path.name)


def test_datalist_on_phantom(data_iseg_phantom):
    cases = iseg2019_datalist(data_iseg_phantom)
    assert [c["case_id"] for c in cases] == [f"subject-{n}" for n in range(1, 13)]  # numeric, not 1, 10, 11, 2
    first = cases[0]
    assert set(first) == {"case_id", "image", "label"}
    assert [Path(p).name for p in first["image"]] == ["subject-1-T1.hdr", "subject-1-T2.hdr"]
    assert all(Path(p).is_absolute() for p in first["image"])
    assert [c["label"] is not None for c in cases] == [True] * 10 + [False] * 2
    t2_only = iseg2019_datalist(data_iseg_phantom, modalities=("t2",))
    assert t2_only[0]["image"][0].endswith("subject-1-T2.hdr")


def test_nested_one_level(data_iseg_phantom, tmp_path):
    nested = tmp_path / "iSeg-2019-Training" / "iSeg-2019-Training"
    for n in (2, 1):
        _copy_subject(data_iseg_phantom, nested, n)
    (tmp_path / "iSeg-2019-Training" / "readme.txt").write_text("stray")
    cases = iseg2019_datalist(tmp_path / "iSeg-2019-Training")
    assert [c["case_id"] for c in cases] == ["subject-1", "subject-2"]
    assert Path(cases[0]["label"]).parent == nested


def test_three_dimensional_headers(data_iseg_phantom, tmp_path):
    """Headers without the trailing singleton dimension load the same way."""
    for kind in ("T1", "T2", "label"):
        image = nib.load(data_iseg_phantom / f"subject-1-{kind}.hdr")
        data = np.asarray(image.dataobj)[..., 0]
        nib.save(nib.AnalyzeImage(data, image.affine, image.header), tmp_path / f"subject-1-{kind}.hdr")
    (case,) = iseg2019_datalist(tmp_path)
    loaded = LoadImaged(["image", "label"], reader="NibabelReader", ensure_channel_first=True)(
        {"image": case["image"], "label": case["label"]}
    )
    assert loaded["image"].shape == (2, 32, 32, 32) and loaded["label"].shape == (1, 32, 32, 32)


def test_missing_inputs(data_iseg_phantom, tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_root"):
        iseg2019_datalist(tmp_path / "no_such_root")
    with pytest.raises(ValueError, match="no iSeg-2019 subjects"):
        iseg2019_datalist(tmp_path)
    _copy_subject(data_iseg_phantom, tmp_path, 3)
    (tmp_path / "subject-3-T2.img").unlink()
    with pytest.raises(FileNotFoundError, match="subject-3-T2.img"):
        iseg2019_datalist(tmp_path)
    (tmp_path / "subject-3-T2.hdr").unlink()
    with pytest.raises(FileNotFoundError, match="subject-3-T2.hdr"):
        iseg2019_datalist(tmp_path)
    with pytest.raises(ValueError, match="unknown iSeg modalities"):
        iseg2019_datalist(data_iseg_phantom, modalities=("FLAIR",))


def test_same_subject_in_two_subfolders(data_iseg_phantom, tmp_path):
    _copy_subject(data_iseg_phantom, tmp_path / "a", 1)
    _copy_subject(data_iseg_phantom, tmp_path / "b", 1)
    with pytest.raises(ValueError, match="subject-1 appears in two folders"):
        iseg2019_datalist(tmp_path)


RAW = np.array([0, 10, 150, 250, 250])


@pytest.mark.parametrize(
    "task, expected",
    [
        ("multiclass", [0, 1, 2, 3, 3]),
        ("CSF", [0, 1, 0, 0, 0]),
        ("GM", [0, 0, 1, 0, 0]),
        ("WM", [0, 0, 0, 1, 1]),
    ],
)
def test_task_labels(task, expected):
    np.testing.assert_array_equal(iseg_task_labels(RAW.astype(np.float64), task), expected)
    out = iseg_task_labels(torch.as_tensor(RAW, dtype=torch.uint8), task)
    assert out.dtype == torch.int64 and out.tolist() == expected


def test_task_label_errors_and_inverse():
    with pytest.raises(ValueError, match=r"\[1, 2\]"):
        iseg_task_labels(np.array([0, 1, 2, 10]), "multiclass")
    with pytest.raises(ValueError, match="valid tasks"):
        iseg_task_labels(RAW, "ET")
    np.testing.assert_array_equal(iseg_raw_labels(iseg_task_labels(RAW, "multiclass"), "multiclass"), RAW)
    assert [iseg_raw_labels(np.array([1]), t).item() for t in ("CSF", "GM", "WM")] == [10, 150, 250]


def test_spec():
    spec = get_dataset("iseg")
    assert spec.modalities == ("T1", "T2") and spec.label_values == (0, 10, 150, 250)
    assert spec.reader == "NibabelReader" and spec.default_phantom_subjects == 10
    assert num_classes(spec, "multiclass") == 4 and num_classes(spec, "WM") == 2


def test_monai_loads_every_file(data_iseg_phantom):
    spec = get_dataset("iseg")
    loader = LoadImaged(keys=["image", "label"], reader=spec.reader, ensure_channel_first=True)
    image_only = LoadImaged(keys=["image"], reader=spec.reader, ensure_channel_first=True)
    for case in iseg2019_datalist(data_iseg_phantom):
        if case["label"] is None:
            data = image_only({"image": case["image"]})
        else:
            data = loader({"image": case["image"], "label": case["label"]})
            assert data["label"].shape == (1, 32, 32, 32)
            torch.testing.assert_close(data["image"].affine, data["label"].affine)
            assert set(torch.unique(data["label"]).tolist()) <= {0.0, 10.0, 150.0, 250.0}
        assert data["image"].shape == (2, 32, 32, 32)


def test_every_missing_file_and_a_misnamed_header_in_one_error(data_iseg_phantom, tmp_path):
    for n in (1, 2, 3):
        _copy_subject(data_iseg_phantom, tmp_path, n)
    (tmp_path / "subject-1-T2.hdr").unlink()
    (tmp_path / "subject-1-T2.img").unlink()
    (tmp_path / "subject-2-T1.img").unlink()
    (tmp_path / "subject-3-T1.hdr").rename(tmp_path / "subject3-T1.hdr")
    with pytest.raises(FileNotFoundError) as error:
        iseg2019_datalist(tmp_path)
    message = str(error.value)
    assert "4 problem(s)" in message
    assert "subject-1: missing subject-1-T2.hdr" in message and "it holds subject-1-T1.hdr" in message
    assert "subject-2: missing subject-2-T1.img (the data half of subject-2-T1.hdr)" in message
    assert "subject3-T1.hdr: an Analyze header not named" in message and "subject-3: missing subject-3-T1.hdr" in message
