"""check_cases: every bad input gives one ValueError that lists every bad case and its problems."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from transrisk_components.data import check_cases, fets2021_datalist, get_dataset, iseg2019_datalist

SHAPE = (8, 9, 10)


def _write(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> str:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return str(path)


def _case(folder: Path, case_id: str, label_values=(0, 1, 2, 4), **overrides) -> dict:
    """A good 2-modality FeTS-like case; ``overrides`` replace one file's array (key: t1, t2, seg)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "t1": rng.uniform(1, 100, SHAPE).astype(np.float32),
        "t2": rng.uniform(1, 100, SHAPE).astype(np.float32),
        "seg": rng.choice(np.array(label_values, np.uint8), SHAPE),
    }
    arrays.update(overrides)
    paths = {k: _write(folder / f"{case_id}_{k}.nii.gz", v) for k, v in arrays.items()}
    return {"case_id": case_id, "image": [paths["t1"], paths["t2"]], "label": paths["seg"], "partition": None}


def test_good_phantoms_pass(data_fets_phantom, data_iseg_phantom):
    check_cases(fets2021_datalist(data_fets_phantom), "fets")
    check_cases(iseg2019_datalist(data_iseg_phantom), get_dataset("iseg"))  # incl. unlabelled subjects


def test_empty_datalist():
    with pytest.raises(ValueError, match="empty datalist"):
        check_cases([], "fets")


def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="valid datasets"):
        check_cases([_case(tmp_path, "a")], "brats")


def test_missing_file(tmp_path):
    case = _case(tmp_path, "a")
    Path(case["image"][1]).unlink()
    with pytest.raises(ValueError, match=r"a: missing file .*a_t2\.nii\.gz"):
        check_cases([case], "fets")


def test_missing_analyze_data_file(data_iseg_phantom, tmp_path):
    case = dict(iseg2019_datalist(data_iseg_phantom)[0])
    hdr = tmp_path / "subject-1-label.hdr"
    hdr.write_bytes(Path(case["label"]).read_bytes())
    case["label"] = str(hdr)
    with pytest.raises(ValueError, match=r"subject-1: missing file .*subject-1-label\.img"):
        check_cases([case], "iseg")


def test_shape_mismatch(tmp_path):
    case = _case(tmp_path, "a", seg=np.zeros((8, 9, 11), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(8, 9, 11\) of .*a_seg.nii.gz differs from \(8, 9, 10\)"):
        check_cases([case], "fets")


def test_affine_mismatch(tmp_path):
    case = _case(tmp_path, "a")
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    _write(Path(case["image"][1]), np.ones(SHAPE, np.float32), shifted)
    with pytest.raises(ValueError, match=r"affine of .*a_t2.nii.gz differs"):
        check_cases([case], "fets")


def test_brats2023_label_values(tmp_path):
    case = _case(tmp_path, "a", label_values=(0, 1, 2, 3))
    expected = r"values \[3\] outside \[0, 1, 2, 4\] \(3 is enhancing tumour in the BraTS 2023"
    with pytest.raises(ValueError, match=expected):
        check_cases([case], "fets")


def test_iseg_label_values(tmp_path):
    case = _case(tmp_path, "a", label_values=(0, 10, 150, 200))
    with pytest.raises(ValueError, match=r"values \[200\] outside \[0, 10, 150, 250\]"):
        check_cases([case], "iseg")


def test_nan_inf_and_all_zero(tmp_path):
    bad = np.ones(SHAPE, np.float32)
    bad[0, 0, :2] = np.nan
    bad[1, 1, 1] = np.inf
    case = _case(tmp_path, "a", t1=bad, t2=np.zeros(SHAPE, np.int16))
    with pytest.raises(ValueError) as info:
        check_cases([case], "fets")
    assert "a_t1.nii.gz has 3 NaN/Inf voxels" in str(info.value)
    assert "a_t2.nii.gz is all zero" in str(info.value)


def test_headers_only_skips_voxels(tmp_path):
    check_cases([_case(tmp_path, "a", t2=np.zeros(SHAPE, np.float32))], "fets", voxels=False)


def test_every_bad_case_listed_once(tmp_path):
    good = _case(tmp_path / "good", "good")
    zero = _case(tmp_path / "zero", "zero", t1=np.zeros(SHAPE, np.float32))
    relabelled = _case(tmp_path / "relabelled", "relabelled", label_values=(0, 3))
    missing = {"case_id": "missing", "image": [str(tmp_path / "nope_t1.nii.gz")], "label": None}
    with pytest.raises(ValueError) as info:
        check_cases([good, zero, relabelled, missing], "fets")
    message = str(info.value)
    assert message.startswith("3 of 4 fets cases failed input checks")
    lines = message.splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == ["zero", "relabelled", "missing"]
    assert "good" not in message


def _truncate(path: str, keep: int | None = None) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2 if keep is None else keep])


def test_truncated_files_are_named_and_the_check_goes_on(tmp_path):
    """Old code: a truncated .nii.gz raised a bare EOFError naming no file, and later cases went unchecked."""
    cut_image = _case(tmp_path / "cut_image", "cut_image")
    _truncate(cut_image["image"][1])  # header readable, voxel data cut off
    cut_label = _case(tmp_path / "cut_label", "cut_label")
    _truncate(cut_label["label"], keep=40)  # not even a whole header
    good = _case(tmp_path / "good", "good")
    relabelled = _case(tmp_path / "relabelled", "relabelled", label_values=(0, 3))
    with pytest.raises(ValueError) as info:
        check_cases([cut_image, cut_label, good, relabelled], "fets")
    message = str(info.value)
    assert message.startswith("3 of 4 fets cases failed input checks")
    assert [line.split(":")[0].strip() for line in message.splitlines()[1:]] == ["cut_image", "cut_label", "relabelled"]
    assert "cut_image_t2.nii.gz" in message and "cut_label_seg.nii.gz" in message
    assert message.count("truncated or corrupt") == 2
