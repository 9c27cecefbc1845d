"""Multi-channel ``inferring`` inputs (a multi-modal target): ``--input`` a folder of case sub-folders laid out as
the dataset is, flat ``<case>_<modality>`` files, or the target-test split of ``splits.json``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from monai.transforms import LoadImage

from transrisk_components.bundle.io.inference import check_inference_inputs, inference_datalist
from transrisk_components.data.scenario import Scenario

CHANNELS = ["t1ce", "flair"]


def test_multimodal_inference_inputs_from_folders_and_splits(data_fets_phantom: Path, tmp_path: Path) -> None:
    subjects = sorted(p for p in Path(data_fets_phantom).iterdir() if p.is_dir())[:2]
    folder = tmp_path / "cases"
    for subject in subjects:
        shutil.copytree(subject, folder / subject.name)
    cases = inference_datalist(str(folder), modalities=CHANNELS)
    assert [c["case_id"] for c in cases] == [s.name for s in subjects]
    assert [Path(p).name for p in cases[0]["image"]] == [f"{subjects[0].name}_{m}.nii.gz" for m in CHANNELS]
    check_inference_inputs(cases, "NibabelReader")
    image = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)(cases[0]["image"])
    assert image.shape[0] == 2, "one channel per modality, in the model's order"
    # flat files matched by their modality suffix
    flat = tmp_path / "flat"
    flat.mkdir()
    for m in CHANNELS:
        shutil.copy(folder / subjects[0].name / f"{subjects[0].name}_{m}.nii.gz", flat / f"case1_{m}.nii.gz")
    assert inference_datalist(str(flat), modalities=CHANNELS) == [
        {"case_id": "case1", "image": [str((flat / f"case1_{m}.nii.gz").resolve()) for m in CHANNELS]}]
    # a missing channel names the case and the modality
    (folder / subjects[1].name / f"{subjects[1].name}_t1ce.nii.gz").unlink()
    with pytest.raises(ValueError, match=rf"{subjects[1].name}: no t1ce image"):
        inference_datalist(str(folder), modalities=CHANNELS)
    # one modality: one image per case, as before
    assert inference_datalist(str(flat), pattern="*_flair.nii.gz", modalities=["flair"])[0]["image"].endswith("case1_flair.nii.gz")
    # datalist mode: the target-test cases of a multi-modal target
    scenario = Scenario("fets", str(data_fets_phantom), str(tmp_path / "run"), "t1", CHANNELS, "multiclass",
                        "multiclass", 2, 1, 1, num_source=2, check_inputs=False)
    expected = scenario.split("target_test")
    scenario.write_splits()
    listed = inference_datalist(str(tmp_path / "run" / "splits.json"), modalities=CHANNELS)
    assert [c["image"] for c in listed] == [list(c["image"]) for c in expected] and len(listed[0]["image"]) == 2
    with pytest.raises(ValueError, match="needs 3 images per case, got 2"):
        inference_datalist(str(tmp_path / "run" / "splits.json"), modalities=["t1", "t1ce", "flair"])
