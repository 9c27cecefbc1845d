"""check_cases: every bad input gives one ValueError that lists every bad case and its problems; voxels are
read once per file identity when a cache file is given."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from transrisk_components.data import check_cases, checks, fets2021_datalist, get_dataset, iseg2019_datalist
from transrisk_components.data.scenario import CHECK_CACHE, Scenario

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


def _case_nii(folder: Path, case_id: str) -> dict:
    """A good case in uncompressed ``.nii`` files, whose size stays the same when their voxels change."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t1 = _write(folder / f"{case_id}_t1.nii", rng.uniform(1, 100, SHAPE).astype(np.float32))
    seg = _write(folder / f"{case_id}_seg.nii", rng.choice(np.array([0, 1, 2, 4], np.uint8), SHAPE))
    return {"case_id": case_id, "image": [t1], "label": seg}


def _rewrite_keeping_identity(path: str, data: np.ndarray) -> None:
    """Replace the voxels of ``path`` and restore its size and modification time."""
    stat = os.stat(path)
    _write(Path(path), data)
    assert os.stat(path).st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_voxels_checked_once_per_file_identity(tmp_path):
    case, cache = _case_nii(tmp_path, "a"), tmp_path / "out" / "input_checks.json"
    check_cases([case], "fets", cache_path=cache)
    assert set(json.loads(cache.read_text())["passed"]) == {case["image"][0], case["label"]}
    zero_t1 = np.zeros(SHAPE, np.float32)
    relabelled = np.full(SHAPE, 3, np.uint8)
    _rewrite_keeping_identity(case["image"][0], zero_t1)
    _rewrite_keeping_identity(case["label"], relabelled)
    check_cases([case], "fets", cache_path=cache)  # same identities: voxels not read again
    with pytest.raises(ValueError, match="is all zero; label .* has values \\[3\\]"):
        check_cases([case], "fets")  # no cache: every voxel read
    os.utime(case["image"][0])  # a touched file is a new identity
    with pytest.raises(ValueError) as info:
        check_cases([case], "fets", cache_path=cache)
    assert "a_t1.nii is all zero" in str(info.value) and "label" not in str(info.value)


def test_cache_keeps_header_checks_and_bad_files(tmp_path):
    cache = tmp_path / "input_checks.json"
    good, bad = _case_nii(tmp_path / "good", "good"), _case(tmp_path / "bad", "bad", t1=np.zeros(SHAPE, np.float32))
    with pytest.raises(ValueError, match="1 of 2"):
        check_cases([good, bad], "fets", cache_path=cache)
    with pytest.raises(ValueError, match="bad: image .*bad_t1.nii.gz is all zero"):
        check_cases([good, bad], "fets", cache_path=cache)  # failures are never cached
    _write(Path(good["label"]), np.zeros((8, 9, 11), np.uint8))
    with pytest.raises(ValueError, match=r"good: shape \(8, 9, 11\)"):
        check_cases([good], "fets", cache_path=cache)  # headers are checked on every run
    Path(good["image"][0]).unlink()
    with pytest.raises(ValueError, match="good: missing file"):
        check_cases([good], "fets", cache_path=cache)


def test_cache_is_per_dataset_label_values(tmp_path):
    case, cache = _case(tmp_path, "a", label_values=(0, 10, 150, 250)), tmp_path / "input_checks.json"
    check_cases([case], "iseg", cache_path=cache)
    with pytest.raises(ValueError, match=r"values \[10, 150, 250\] outside \[0, 1, 2, 4\]"):
        check_cases([case], "fets", cache_path=cache)


def test_unreadable_cache_is_ignored(tmp_path, caplog):
    cache = tmp_path / "input_checks.json"
    cache.write_text("{not json")
    case = _case(tmp_path, "a", t1=np.zeros(SHAPE, np.float32))
    with pytest.raises(ValueError, match="is all zero"):
        check_cases([case], "fets", cache_path=cache)
    assert "ignoring unreadable input-check cache" in caplog.text


def test_scenario_checks_voxels_once(data_fets_phantom, tmp_path, monkeypatch):
    def scenario() -> Scenario:
        root, out = str(data_fets_phantom), str(tmp_path)
        return Scenario("fets", root, out, "t1", "flair", "multiclass", "multiclass", 2, 1, 1)

    scenario().prepare()
    assert (tmp_path / CHECK_CACHE).is_file()
    reads = []
    monkeypatch.setattr(checks, "unexpected_values", lambda *args: reads.append(args) or np.array([]))
    scenario().prepare()  # e.g. evaluation after training: headers only
    assert reads == []


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
