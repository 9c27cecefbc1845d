"""Clinical inputs and outputs through ITK: the ``inferring`` run id on a DICOM series and on NRRD / MHA files.

A phantom FeTS case is written as a DICOM series (one folder of slices) and as NRRD with an origin and a
flipped axis, with ITK; inference must read them (MONAI ``ITKReader``) and write the segmentation in the
input's geometry: same size, spacing, origin and direction as ITK reads the input, FeTS label values only.
The model is a randomly initialised tiny network: geometry and label values do not depend on its weights.
"""

from __future__ import annotations

import locale
from collections.abc import Iterator
from pathlib import Path

import itk
import numpy as np
import pytest
import torch
from bundle_helpers import run_bundle
from monai.bundle import ConfigParser

from transrisk_components.bundle.io.inference import inference_datalist

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "fets" / "configs"
NETWORK = {"network_def#init_filters": 4, "network_def#blocks_down": [1, 2], "network_def#blocks_up": [1]}
SETTINGS = {**NETWORK, "patch_size": [16, 16, 16]}
FETS_VALUES = {0, 1, 2, 4}


@pytest.fixture(autouse=True, scope="module")
def keep_locale() -> Iterator[None]:
    """ITK's DICOM reader resets the process locale to C; later tests in the session must not inherit that."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


def write_dicom_series(image: itk.Image, folder: Path) -> None:
    """Write a 3D ``int16`` ITK image as a DICOM series, one file per slice with its position and orientation."""
    array = itk.array_from_image(image)  # [z, y, x]
    spacing = np.array(itk.spacing(image), dtype=float)
    origin = np.array(itk.origin(image), dtype=float)
    direction = itk.array_from_matrix(image.GetDirection())
    folder.mkdir(parents=True)
    study, series = "1.2.826.0.1.3680043.2.1125.1.1", "1.2.826.0.1.3680043.2.1125.1.2"
    for k in range(array.shape[0]):
        position = origin + direction @ np.array([0.0, 0.0, k * spacing[2]])
        slice_image = itk.image_from_array(np.ascontiguousarray(array[k : k + 1]))
        slice_image.SetSpacing(spacing.tolist())
        slice_image.SetOrigin(position.tolist())
        slice_image.SetDirection(image.GetDirection())
        tags = itk.MetaDataDictionary()
        for key, value in {
            "0008|0060": "MR",
            "0020|000d": study,
            "0020|000e": series,
            "0008|0018": f"{series}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in np.concatenate([direction[:, 0], direction[:, 1]])),
            "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}",
            "0018|0050": f"{spacing[2]:.6f}",
        }.items():
            tags[key] = value
        slice_image.SetMetaDataDictionary(tags)
        io = itk.GDCMImageIO.New()
        io.KeepOriginalUIDOn()
        itk.imwrite(slice_image, str(folder / f"slice_{k:03d}.dcm"), imageio=io)


def assert_same_geometry(written: itk.Image, reference: itk.Image) -> None:
    assert tuple(itk.size(written)) == tuple(itk.size(reference))
    np.testing.assert_allclose(itk.spacing(written), itk.spacing(reference), atol=1e-4)
    np.testing.assert_allclose(itk.origin(written), itk.origin(reference), atol=1e-4)
    np.testing.assert_allclose(
        itk.array_from_matrix(written.GetDirection()), itk.array_from_matrix(reference.GetDirection()), atol=1e-4
    )


@pytest.fixture(scope="module")
def clinical(tmp_path_factory: pytest.TempPathFactory, data_fets_phantom: Path) -> dict[str, Path]:
    """A bundle folder with a random tiny model, and one phantom FLAIR case as DICOM, NRRD and MHA inputs."""
    root = tmp_path_factory.mktemp("clinical")
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update(NETWORK)
    torch.manual_seed(0)
    (root / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    flair = next(data_fets_phantom.glob("FeTS21_Training_001/*_flair.nii.gz"))
    image = itk.imread(str(flair), itk.SS)
    inputs = {"dicom": root / "inputs_dicom", "nrrd": root / "inputs_nrrd"}
    write_dicom_series(image, inputs["dicom"] / "case001_flair")
    moved = itk.image_from_array(itk.array_from_image(image))
    moved.SetSpacing(itk.spacing(image))
    moved.SetOrigin([12.5, -40.0, 7.25])
    moved.SetDirection(itk.matrix_from_array(np.diag([-1.0, 1.0, 1.0])))  # x flipped
    inputs["nrrd"].mkdir()
    itk.imwrite(moved, str(inputs["nrrd"] / "case001_flair.nrrd"))
    itk.imwrite(moved, str(inputs["nrrd"] / "case002_flair.mha"))
    return {"root": root, **inputs}


def test_a_folder_lists_dicom_series_and_itk_files(clinical: dict[str, Path]) -> None:
    assert [c["case_id"] for c in inference_datalist(str(clinical["dicom"]))] == ["case001_flair"]
    assert [c["case_id"] for c in inference_datalist(str(clinical["nrrd"]))] == ["case001_flair", "case002_flair"]


def test_dicom_series_is_segmented_in_its_geometry(clinical: dict[str, Path]) -> None:
    out = clinical["root"] / "pred_dicom"
    run_bundle(CONFIGS, "inferring", clinical["root"], "", SETTINGS, ("inference.json",),
               input=str(clinical["dicom"]), output_dir=str(out))
    assert sorted(p.name for p in out.iterdir()) == ["case001_flair_seg.nii.gz"]
    written = itk.imread(str(out / "case001_flair_seg.nii.gz"))
    assert_same_geometry(written, itk.imread(str(clinical["dicom"] / "case001_flair")))
    assert set(np.unique(itk.array_from_image(written)).tolist()) <= FETS_VALUES


@pytest.mark.parametrize("output_format", ["nifti", "nrrd"])
def test_nrrd_and_mha_are_segmented_in_their_geometry(clinical: dict[str, Path], output_format: str) -> None:
    out = clinical["root"] / f"pred_{output_format}"
    run_bundle(CONFIGS, "inferring", clinical["root"], "", SETTINGS, ("inference.json",),
               input=str(clinical["nrrd"]), output_dir=str(out), output_format=output_format)
    ext = {"nifti": ".nii.gz", "nrrd": ".nrrd"}[output_format]
    assert sorted(p.name for p in out.iterdir()) == [f"case001_flair_seg{ext}", f"case002_flair_seg{ext}"]
    for name, source in (("case001_flair", "case001_flair.nrrd"), ("case002_flair", "case002_flair.mha")):
        written = itk.imread(str(out / f"{name}_seg{ext}"))
        assert_same_geometry(written, itk.imread(str(clinical["nrrd"] / source)))
        assert set(np.unique(itk.array_from_image(written)).tolist()) <= FETS_VALUES
