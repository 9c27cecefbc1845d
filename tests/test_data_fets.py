"""FeTS2021 datalist, partitioning CSVs and task labels, on phantom output and the real CSV specimens."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged

from transrisk_components.data import (
    fets2021_datalist,
    fets_raw_labels,
    fets_task_labels,
    get_dataset,
    num_classes,
    read_fets_partitions,
)
from transrisk_components.data.layout import DatasetLayoutError
from transrisk_components.data.scenario import Scenario


def _copy_subject(root: Path, dest: Path, case_id: str = "FeTS21_Training_001") -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(root / case_id, dest / case_id)
    return dest / case_id


def test_datalist_on_phantom(data_fets_phantom):
    cases = fets2021_datalist(data_fets_phantom, partition_csv="partitioning_1.csv")
    ids = [c["case_id"] for c in cases]
    assert ids == sorted(ids) and len(ids) == 11
    assert "FeTS21_Training_011" not in ids and "FeTS21_Training_012" in ids  # gaps allowed
    first = cases[0]
    assert set(first) == {"case_id", "image", "label", "partition"}
    assert [Path(p).name for p in first["image"]] == [
        f"FeTS21_Training_001_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")
    ]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in first["image"])
    assert first["label"].endswith("FeTS21_Training_001_seg.nii.gz")
    assert {c["partition"] for c in cases} == {"01", "02", "03"}


def test_modalities_order_and_no_partition(data_fets_phantom):
    cases = fets2021_datalist(data_fets_phantom, modalities=("flair", "T1CE"))
    assert [Path(p).name.split("_")[-1] for p in cases[0]["image"]] == ["flair.nii.gz", "t1ce.nii.gz"]
    assert all(c["partition"] is None for c in cases)


def test_t1gd_alias_unlabelled_and_stray_files(data_fets_phantom, tmp_path):
    folder = _copy_subject(data_fets_phantom, tmp_path)
    (folder / "FeTS21_Training_001_t1ce.nii.gz").rename(folder / "FeTS21_Training_001_t1gd.nii.gz")
    (folder / "FeTS21_Training_001_seg.nii.gz").unlink()
    (tmp_path / "README.txt").write_text("stray")
    (tmp_path / "survival_info.csv").write_text("a,b\n")
    (tmp_path / "notes").mkdir()
    (case,) = fets2021_datalist(tmp_path, modalities=("t1gd",))
    assert case["image"][0].endswith("_t1gd.nii.gz")
    assert case["label"] is None


def test_missing_inputs(data_fets_phantom, tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_root"):
        fets2021_datalist(tmp_path / "no_such_root")
    with pytest.raises(ValueError, match="no FeTS21_Training"):
        fets2021_datalist(tmp_path)
    folder = _copy_subject(data_fets_phantom, tmp_path)
    (folder / "FeTS21_Training_001_flair.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="FeTS21_Training_001_flair.nii.gz"):
        fets2021_datalist(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        fets2021_datalist(data_fets_phantom, partition_csv=tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="unknown FeTS modalities"):
        fets2021_datalist(data_fets_phantom, modalities=("dwi",))


def test_real_partitioning_csvs(data_shared_fixtures):
    first = read_fets_partitions(data_shared_fixtures / "fets2021" / "partitioning_1.csv")
    second = read_fets_partitions(data_shared_fixtures / "fets2021" / "partitioning_2.csv")
    assert len(first) == len(second) == 341
    assert first["FeTS21_Training_001"] == "01"
    assert sorted(set(first.values())) == [f"{i:02d}" for i in range(1, 18)]
    assert sorted(set(second.values())) == [f"{i:02d}" for i in range(1, 23)]
    assert all(not k.endswith("\r") and not v.endswith("\r") for k, v in first.items())


def test_real_csv_with_phantom_root(data_fets_phantom, data_shared_fixtures):
    csv_path = data_shared_fixtures / "fets2021" / "partitioning_1.csv"
    cases = fets2021_datalist(data_fets_phantom, partition_csv=csv_path)
    expected = read_fets_partitions(csv_path)
    assert all(c["partition"] == expected.get(c["case_id"]) for c in cases)


def test_partition_columns_by_name(tmp_path):
    csv_path = tmp_path / "partitioning_2022.csv"
    csv_path.write_bytes(b"\xef\xbb\xbfPartition_ID,Subject_ID\r\n3,FeTS2022_00001\r\n1,FeTS2022_00002")
    assert read_fets_partitions(csv_path) == {"FeTS2022_00001": "3", "FeTS2022_00002": "1"}
    csv_path.write_text("Subject,Site\nx,1\n")
    with pytest.raises(ValueError, match="Partition_ID"):
        read_fets_partitions(csv_path)


RAW = np.array([0, 1, 2, 4, 4, 2])


@pytest.mark.parametrize(
    "task, expected",
    [
        ("multiclass", [0, 1, 2, 3, 3, 2]),
        ("ET", [0, 0, 0, 1, 1, 0]),
        ("TC", [0, 1, 0, 1, 1, 0]),
        ("WT", [0, 1, 1, 1, 1, 1]),
        ("ED", [0, 0, 1, 0, 0, 1]),
        ("NCR", [0, 1, 0, 0, 0, 0]),
    ],
)
def test_task_labels(task, expected):
    for label in (RAW, RAW.astype(np.float32)):
        out = fets_task_labels(label, task)
        assert isinstance(out, np.ndarray) and out.dtype == np.int64
        np.testing.assert_array_equal(out, expected)
    tensor = fets_task_labels(torch.as_tensor(RAW, dtype=torch.float32), task)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.int64
    assert tensor.tolist() == expected
    meta = fets_task_labels(MetaTensor(torch.as_tensor(RAW)[None], affine=torch.eye(4)), task)
    assert isinstance(meta, MetaTensor) and meta.shape == (1, 6)


def test_task_label_errors():
    with pytest.raises(ValueError, match=r"\[3\]"):
        fets_task_labels(np.array([0, 1, 3]), "multiclass")
    with pytest.raises(ValueError, match="valid tasks"):
        fets_task_labels(RAW, "NET")
    with pytest.raises(ValueError, match=r"\[4\]"):
        fets_raw_labels(np.array([0, 4]), "multiclass")


def test_raw_labels_inverse():
    np.testing.assert_array_equal(fets_raw_labels(fets_task_labels(RAW, "multiclass"), "multiclass"), RAW)
    assert fets_raw_labels(torch.tensor([0, 1]), "ET").tolist() == [0, 4]
    assert fets_raw_labels(np.array([0, 1]), "TC").tolist() == [0, 1]
    for task in ("ED", "NCR"):  # single raw labels come back exactly
        single = np.where(fets_task_labels(RAW, task) == 1, RAW, 0)
        np.testing.assert_array_equal(fets_raw_labels(fets_task_labels(RAW, task), task), single)


def test_spec():
    spec = get_dataset("fets")
    assert spec.datalist is fets2021_datalist and spec.reader == "NibabelReader"
    assert spec.modalities == ("t1", "t1ce", "t2", "flair") and spec.label_values == (0, 1, 2, 4)
    assert num_classes(spec, "multiclass") == 4 and num_classes(spec, "ET") == 2
    with pytest.raises(ValueError, match="valid tasks"):
        num_classes(spec, "CSF")
    with pytest.raises(ValueError, match="valid datasets"):
        get_dataset("brats")


def test_monai_loads_every_file(data_fets_phantom):
    spec = get_dataset("fets")
    loader = LoadImaged(keys=["image", "label"], reader=spec.reader, ensure_channel_first=True)
    for case in fets2021_datalist(data_fets_phantom):
        data = loader({"image": case["image"], "label": case["label"]})
        assert data["image"].shape == (4, 32, 32, 32)
        assert data["label"].shape == (1, 32, 32, 32)
        torch.testing.assert_close(data["image"].affine, data["label"].affine)
        assert set(torch.unique(data["label"]).tolist()) <= {0.0, 1.0, 2.0, 4.0}


def test_a_misnamed_case_folder_and_every_missing_file_in_one_error(data_fets_phantom, tmp_path):
    """A renamed case folder is named with its files, not left out in silence; every case's missing files come in the
    same error, with what each folder holds."""
    shutil.copytree(data_fets_phantom, tmp_path / "data")
    root = tmp_path / "data"
    cases = sorted(p for p in root.iterdir() if p.is_dir())
    renamed = cases[0].rename(root / cases[0].name.replace("FeTS21_", "FeTS2021_"))
    for case in cases[1:3]:
        (case / f"{case.name}_t2.nii.gz").unlink()
    (cases[3] / f"{cases[3].name}_flair.nii.gz").unlink()
    with pytest.raises(FileNotFoundError) as error:
        fets2021_datalist(root)
    message = str(error.value)
    assert "4 problem(s)" in message
    assert renamed.name in message and f"{cases[0].name}_t1.nii.gz" in message, "the misnamed folder and its files"
    for case in cases[1:3]:
        assert f"{case.name}: missing {case.name}_t2.nii.gz; the folder holds {case.name}_flair.nii.gz" in message
    assert f"{cases[3].name}: missing {cases[3].name}_flair.nii.gz" in message


def test_a_scenario_lists_the_five_defects_of_both_modalities_and_the_damaged_files_in_one_error(data_fets_phantom, tmp_path):
    """The new user's damaged copy: a renamed folder, a case without its target (FLAIR) image, a folder holding
    another case's files, a misnamed source (T1) image and a truncated label -- one run, one error, all five."""
    shutil.copytree(data_fets_phantom, tmp_path / "data")
    root = tmp_path / "data"
    cases = sorted(p for p in root.iterdir() if p.is_dir())
    renamed = cases[0].rename(root / cases[0].name.replace("FeTS21_", "FeTS2021_"))
    (cases[1] / f"{cases[1].name}_flair.nii.gz").unlink()
    for file in cases[2].iterdir():
        file.rename(cases[2] / file.name.replace(cases[2].name, "FeTS21_Training_999"))
    (cases[3] / f"{cases[3].name}_t1.nii.gz").rename(cases[3] / f"{cases[3].name}_T1.nii.gz.bak")
    label = cases[4] / f"{cases[4].name}_seg.nii.gz"
    label.write_bytes(label.read_bytes()[: len(label.read_bytes()) // 2])
    scenario = Scenario("fets", str(root), str(tmp_path / "out"), "t1", "flair", "multiclass", "multiclass",
                        num_target_train=2, num_target_val=1, num_target_test=2, num_source=3)
    with pytest.raises(DatasetLayoutError) as error:
        scenario.prepare()
    message = str(error.value)
    assert renamed.name in message
    assert f"{cases[1].name}: missing {cases[1].name}_flair.nii.gz" in message, "the target modality's problem"
    assert f"{cases[2].name}: missing" in message and "FeTS21_Training_999" in message, "another case's files"
    assert f"{cases[3].name}: missing {cases[3].name}_t1.nii.gz" in message, "the source modality's problem"
    assert f"{cases[4].name}:" in message and "seg" in message.split(f"{cases[4].name}:")[-1], "the damaged label"


def test_a_modality_missing_from_every_case_is_listed_without_an_empty_datalist_line(data_fets_phantom, tmp_path):
    """No case has the target modality: the error lists each missing file, and not the input checks' bare "empty
    datalist" for the target role that has no complete case left."""
    shutil.copytree(data_fets_phantom, tmp_path / "data")
    root = tmp_path / "data"
    cases = sorted(p for p in root.iterdir() if p.is_dir())
    for case in cases:
        (case / f"{case.name}_flair.nii.gz").unlink()
    scenario = Scenario("fets", str(root), str(tmp_path / "out"), "t1", "flair", "multiclass", "multiclass",
                        num_target_train=2, num_target_val=1, num_target_test=2, num_source=3)
    with pytest.raises(DatasetLayoutError) as error:
        scenario.prepare()
    message = str(error.value)
    assert all(f"{case.name}: missing {case.name}_flair.nii.gz" in message for case in cases)
    assert "empty datalist" not in message, message
