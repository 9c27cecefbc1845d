"""Inference inputs and outputs: the cases a run predicts, and predictions in the dataset's raw labels.

Inputs (:func:`inference_datalist`): a folder of images, a datalist JSON, or a split of ``splits.json``. Images
are NIfTI (``.nii.gz``, ``.nii``), Analyze 7.5 / NIfTI pairs named by their ``.hdr`` header (the ``.img``
half sits next to it and is not listed separately), NRRD / MetaImage (``.nrrd``, ``.mha``, ``.mhd``), or a
DICOM series: a sub-folder holding the slices of one series (one folder per case and modality).

Readers (the inference configs' ``LoadImaged(reader=["ITKReader", NibabelAnalyzeReader])``, the last listed
tried first): NIfTI and Analyze through nibabel -- the same reader as in training, so the affines agree --
and everything else (NRRD, MetaImage, DICOM series) through ITK, whose LPS geometry MONAI converts to RAS.

Outputs: predictions on the input's grid and affine, as NIfTI (default), Analyze 7.5, NRRD or MetaImage.

A bundle's inference postprocessing ends with::

    AsDiscreted(keys="pred", argmax=True)                 # [C, *S] logits -> [1, *S] class map
    RawLabelsd(keys="pred", dataset=..., task=...)        # class indices -> raw label values
    prediction_saver(keys="pred", output_dir=..., output_format="nifti" | "analyze" | "nrrd" | "mha")

:func:`prediction_saver` is MONAI's ``SaveImaged`` with ``uint8`` output, nearest-neighbour handling and,
for ``"analyze"``, the :class:`AnalyzeWriter` defined here: MONAI's own writers cannot produce Analyze
7.5 (nibabel turns a ``Nifti1Image`` saved as ``.hdr`` into a NIfTI pair, and ITK writes NIfTI pairs
too), whereas nibabel's ``AnalyzeImage`` writes the true format that iSeg-2019 ships.

Raw values (class index -> raw label):

- ``multiclass``: class ``k`` -> the dataset's ``k``-th raw label (FeTS 0, 1, 2, 4; iSeg 0, 10, 150, 250);
- binary tasks: 1 -> ET 4, CSF 10, GM 150, WM 250. TC and WT unite several raw labels, so their
  foreground is written as 1, a region marker (it does not claim the voxel is necrotic core).

The tables are the dataset registry's (``DatasetSpec.raw_labels``: ``fets_raw_labels``, ``iseg_raw_labels``).
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.config import DtypeLike, NdarrayOrTensor, PathLike
from monai.data import ImageReader, ImageWriter, ITKWriter, NibabelReader, NibabelWriter
from monai.transforms import LoadImage, MapTransform, SaveImaged, Transform
from monai.utils import convert_data_type

from transrisk_components.data.registry import get_dataset, num_classes

__all__ = ["AnalyzeWriter", "InferenceCases", "check_inference_inputs", "NibabelAnalyzeReader", "is_dicom_series", "RawLabels", "RawLabelsd", "prediction_saver", "raw_label_values", "to_analyze_orientation"]

#: Image file endings a folder is searched for; a ``.hdr`` stands for its ``.hdr``/``.img`` pair.
IMAGE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".hdr", ".nrrd", ".mha", ".mhd")


def is_dicom_series(folder: Path) -> bool:
    """Whether ``folder`` holds DICOM files (``*.dcm``, or files with the ``DICM`` marker at byte 128)."""
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        if file.suffix.lower() == ".dcm":
            return True
        with open(file, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    return False


class NibabelAnalyzeReader(NibabelReader):
    """MONAI's ``NibabelReader`` that also accepts Analyze 7.5 / NIfTI pairs (``.hdr``, ``.img``) by suffix.

    MONAI picks a reader by file suffix and gives ``.hdr`` to ITK, whose Analyze affine (LPS, identity
    direction) differs from nibabel's (radiological LAS): reading training images with nibabel and inference
    inputs with ITK would mirror the predictions. Listed after ``"ITKReader"`` in ``LoadImaged(reader=[...])``
    it takes NIfTI and Analyze, leaving NRRD, MetaImage and DICOM series to ITK.
    """

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True for ``.nii``, ``.nii.gz``, ``.hdr`` and ``.img`` files (every one of a sequence)."""
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return bool(names) and all(str(n).lower().endswith((".nii", ".nii.gz", ".hdr", ".img")) for n in names)


def image_stem(name: str) -> str:
    """A file name without its image ending: ``"subject-9-T2.hdr"`` -> ``"subject-9-T2"``, ``"a.nii.gz"`` -> ``"a"``."""
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _entry(case_id: str, image: str | list[str], channels: int = 1) -> dict:
    """``{"case_id", "image"}`` with a single-file image as a plain path (the saver names outputs after it); with
    ``channels > 1`` a list of that many paths, one per input channel."""
    if channels > 1:
        images = [image] if isinstance(image, (str, os.PathLike)) else list(image)
        if len(images) != channels:
            raise ValueError(f"{case_id}: a {channels}-channel model needs {channels} images per case, got {len(images)}: {images}")
        return {"case_id": case_id, "image": [str(i) for i in images]}
    if isinstance(image, (list, tuple)):
        if len(image) != 1:
            raise ValueError(f"{case_id}: inference takes one image per case, got {len(image)}: {image}")
        image = image[0]
    return {"case_id": case_id, "image": str(image)}


def _image_files(folder: Path, pattern: str) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if fnmatch.fnmatchcase(p.name, pattern)
        and ((p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS)) or (p.is_dir() and is_dicom_series(p)))
    )


def _modality_of(name: str, modalities: Sequence[str]) -> tuple[str, str] | None:
    """``(case stem, modality)`` of an image named ``<case>_<modality>`` or ``<case>-<modality>`` (any case)."""
    stem = image_stem(name)
    for modality in sorted(modalities, key=len, reverse=True):
        for sep in ("_", "-"):
            if stem.lower().endswith((sep + modality).lower()):
                return stem[: -len(modality) - 1], modality
    return None


def _multimodal_folder(path: Path, pattern: str, modalities: Sequence[str]) -> list[dict]:
    """One case per sub-folder (the dataset's layout, FeTS ``<case>/<case>_<modality>.nii.gz``), or, without
    sub-folders, the folder's files grouped by the name before their ``_<modality>`` / ``-<modality>`` suffix."""
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not is_dicom_series(p) and fnmatch.fnmatchcase(p.name, pattern))
    groups: dict[str, dict[str, list[Path]]] = {}
    if folders:
        for folder in folders:
            groups[folder.name] = {}
            for file in _image_files(folder, "*"):
                found = _modality_of(file.name, modalities)
                if found is not None:
                    groups[folder.name].setdefault(found[1], []).append(file)
    else:
        for file in _image_files(path, pattern):
            found = _modality_of(file.name, modalities)
            if found is not None:
                groups.setdefault(found[0], {}).setdefault(found[1], []).append(file)
    if not groups:
        raise ValueError(f"no case folders or images named <case>_<modality> ({', '.join(modalities)}) in {path}")
    problems, cases = [], []
    for case_id, files in sorted(groups.items()):
        missing = [m for m in modalities if m not in files]
        repeated = [m for m in modalities if len(files.get(m, ())) > 1]
        if missing or repeated:
            problems += [f"  {case_id}: no {m} image (a file named *_{m} or *-{m})" for m in missing]
            problems += [f"  {case_id}: several {m} images: {[str(f) for f in files[m]]}" for m in repeated]
            continue
        cases.append({"case_id": case_id, "image": [str(files[m][0].resolve()) for m in modalities]})
    if problems:
        raise ValueError(
            f"{len(problems)} missing or ambiguous input image(s) in {path} for the model's channels "
            f"{list(modalities)}:\n" + "\n".join(problems)
        )
    return cases


def inference_datalist(
    source: str, split: str = "target_test", pattern: str = "*", modalities: Sequence[str] | None = None
) -> list[dict]:
    """Cases to predict, ``[{"case_id", "image": path}]`` (``image`` a list of paths, one per channel, for a
    multi-modal model).

    Args:
        source: a folder (every ``*.nii.gz`` / ``*.nii`` / ``*.hdr`` / ``*.nrrd`` / ``*.mha`` / ``*.mhd``
            image and every DICOM-series sub-folder in it whose name matches ``pattern``, sorted; a series is
            one case named after its folder), a JSON list of ``{"image", ...}`` dicts, or a ``splits.json`` written by
            :class:`~transrisk_components.data.scenario.Scenario`.
        split: which split of a ``splits.json`` to predict.
        pattern: shell-style file-name filter for a folder (case-sensitive), e.g. ``"*-T2.hdr"`` to predict
            only the T2 images of an iSeg-2019 folder that also holds T1 images and labels; ignored for JSON.
        modalities: the model's input channels, in order (``target_modality``); with several, a folder holds one
            sub-folder per case laid out as the dataset is (FeTS ``<case>/<case>_<modality>.nii.gz``, iSeg
            ``subject-9-T1.hdr``) or flat files ``<case>_<modality>.*`` / ``<case>-<modality>.*``, and a JSON entry's
            ``image`` is a list of as many paths. ``None`` or one name: one image per case, as before.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: a folder without matching images, an unknown split, or an entry without ``image``.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"inference input not found: {path}")
    channels = len(modalities) if modalities is not None and not isinstance(modalities, str) else 1
    if path.is_dir() and channels > 1:
        return _multimodal_folder(path, pattern, list(modalities))
    if path.is_dir():
        images = sorted(
            p
            for p in path.iterdir()
            if fnmatch.fnmatchcase(p.name, pattern)
            and ((p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS)) or (p.is_dir() and is_dicom_series(p)))
        )
        if not images:
            raise ValueError(
                f"no images ({', '.join('*' + e for e in IMAGE_EXTENSIONS)}) or DICOM-series folders matching "
                f"{pattern!r} in {path}"
            )
        return [_entry(image_stem(p.name), str(p.resolve())) for p in images]
    content = json.loads(path.read_text())
    if isinstance(content, dict) and "splits" in content:
        if split not in content["splits"]:
            raise ValueError(f"{path} has no split {split!r}; splits: {sorted(content['splits'])}")
        content = content["splits"][split]
    cases = []
    for index, case in enumerate(content):
        if "image" not in case:
            raise ValueError(f"{path}: entry {index} has no 'image'")
        cases.append(_entry(str(case.get("case_id", f"case_{index:03d}")), case["image"], channels))
    return cases


def check_inference_inputs(cases: Sequence[dict], reader: Sequence[str | ImageReader] | str | ImageReader | None = None) -> None:
    """Read every case's image to its last voxel before any prediction, and report every bad one at once.

    A truncated or corrupt file, NaN/Inf voxels or an all-zero image would otherwise stop a run half-way, with
    some predictions written and the rest not. Images are read with the pipeline's own ``reader`` (MONAI
    ``LoadImage``), so every format it predicts (NIfTI, Analyze, NRRD, MetaImage, DICOM series) is checked.

    Args:
        cases: ``[{"case_id", "image": path}]`` as from :func:`inference_datalist`.
        reader: the ``reader`` of the preprocessing's ``LoadImaged``.

    Raises:
        ValueError: one error listing every bad case, its file and what is wrong.
    """
    load = LoadImage(reader=reader, image_only=True)
    report = []
    for case in cases:
        try:
            image = np.asarray(load(case["image"]))
        except Exception as err:  # readers raise EOFError, zlib.error, RuntimeError, ... for damaged files
            report.append(
                f"  {case['case_id']}: cannot read {case['image']} ({type(err).__name__}: {err}); "
                "the file is truncated or corrupt"
            )
            continue
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
            report.append(f"  {case['case_id']}: image {case['image']} has {int((~np.isfinite(image)).sum())} NaN/Inf voxels")
        elif not np.any(image):
            report.append(f"  {case['case_id']}: image {case['image']} is all zero")
    if report:
        raise ValueError(
            f"{len(report)} of {len(cases)} inference inputs failed input checks (nothing was predicted; fix or "
            "remove them, or point --input at the good ones):\n" + "\n".join(report)
        )


class InferenceCases(Iterable):
    """The cases of :func:`inference_datalist`, read when iteration starts (each time), not when built.

    A config builds its dataset, loader and evaluator before anything runs (MONAI's ``check_properties`` does,
    on a fresh clone whose default input, the training run's ``splits.json``, does not exist yet). Wrapped in
    MONAI's ``IterableDataset`` the inputs are only looked for when the evaluator runs; a missing input is then
    the ``FileNotFoundError`` of :func:`inference_datalist`. Every input is then checked
    (:func:`check_inference_inputs`) before the first case is handed out, so a bad file never leaves a run
    half-predicted.

    Args:
        source, split, pattern, modalities: as :func:`inference_datalist`.
        reader: the preprocessing's image reader(s), used by the input check.
    """

    def __init__(
        self,
        source: str,
        split: str = "target_test",
        pattern: str = "*",
        reader: Sequence[str | ImageReader] | str | ImageReader | None = None,
        modalities: Sequence[str] | None = None,
    ) -> None:
        self.source = source
        self.split = split
        self.pattern = pattern
        self.reader = reader
        self.modalities = modalities

    def __iter__(self) -> Iterator[dict]:
        cases = inference_datalist(self.source, self.split, self.pattern, self.modalities)
        check_inference_inputs(cases, self.reader)
        return iter(cases)


#: The orientation nibabel assumes for Analyze 7.5 (radiological: x runs to the patient's left).
ANALYZE_AXCODES: tuple[str, str, str] = ("L", "A", "S")
_ANALYZE_DTYPES = (np.uint8, np.int16, np.int32, np.float32, np.float64)


def raw_label_values(dataset: str, task: str) -> tuple[int, ...]:
    """Raw label value of each class of ``task``: entry ``k`` is written for class ``k``.

    Example: ``raw_label_values("iseg", "multiclass") == (0, 10, 150, 250)``,
    ``raw_label_values("fets", "ET") == (0, 4)``, ``raw_label_values("fets", "WT") == (0, 1)``.
    """
    spec = get_dataset(dataset)
    classes = np.arange(num_classes(spec, task))
    return tuple(int(v) for v in spec.raw_labels(classes, task))


class RawLabels(Transform):
    """Map a class-index map to raw label values; a ``MetaTensor`` keeps its metadata (affine, file name).

    Args:
        dataset: ``"fets"`` or ``"iseg"``.
        task: ``"multiclass"`` or a region name.

    Call with a class map of any shape (typically ``[1, *spatial]``), int or integral float, numpy or
    torch; returns int64 of the same shape and container type.

    Raises:
        ValueError: unknown dataset/task, or values that are not class indices of the task (e.g. logits
            given before argmax).
    """

    def __init__(self, dataset: str, task: str) -> None:
        self.spec = get_dataset(dataset)
        num_classes(self.spec, task)
        self.task = task

    def __call__(self, class_map: NdarrayOrTensor) -> NdarrayOrTensor:
        try:
            return self.spec.raw_labels(class_map, self.task)
        except ValueError as err:
            raise ValueError(f"{err}; RawLabels expects class indices (apply AsDiscreted(argmax=True) first)") from err


class RawLabelsd(MapTransform):
    """Dictionary version of :class:`RawLabels`, e.g. ``RawLabelsd(keys="pred", dataset="fets", task="multiclass")``."""

    def __init__(
        self, keys: Hashable | Sequence[Hashable], dataset: str, task: str, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = RawLabels(dataset, task)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


def to_analyze_orientation(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder / flip voxel axes so that they run L, A, S, the only orientation Analyze 7.5 can state.

    Args:
        data: ``[X, Y, Z, ...]`` channel-last array.
        affine: ``[4, 4]`` voxel -> world (RAS mm) affine of ``data``.

    Returns:
        The reoriented array and its affine. The world position of every voxel is unchanged.

    Raises:
        ValueError: the affine is oblique (rotated off the voxel axes), which Analyze cannot store.
    """
    current = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(ANALYZE_AXCODES))
    spatial = data.shape[:3]
    reoriented = nib.orientations.apply_orientation(data, transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, spatial)
    linear = new_affine[:3, :3]
    if not np.allclose(linear, np.diag(np.diag(linear)), atol=1e-4 * np.abs(linear).max()):
        raise ValueError("oblique affine: Analyze 7.5 stores voxel sizes only; write NIfTI instead")
    return reoriented, new_affine


class AnalyzeWriter(NibabelWriter):
    """MONAI image writer for Analyze 7.5 ``.hdr`` / ``.img`` pairs (nibabel ``AnalyzeImage``).

    Use as ``SaveImaged(..., writer=AnalyzeWriter, output_ext=".hdr", output_dtype=np.uint8)`` (or the
    dotted path ``"transrisk_components.bundle.io.inference.AnalyzeWriter"`` in a config).

    Analyze stores voxel sizes but neither origin nor direction: nibabel reads every Analyze file as
    L, A, S axes centred on the volume. The writer therefore reorients the array to L, A, S
    (:func:`to_analyze_orientation`), so anatomy is never mirrored; the origin is lost, exactly as for the
    Analyze inputs. A prediction on the grid of an Analyze input read with ``NibabelReader`` is thus read
    back with the input's affine. Supported dtypes: uint8, int16, int32, float32, float64.
    """

    def write(self, filename: os.PathLike | str, verbose: bool = False, **obj_kwargs: Any) -> None:
        """Save ``filename`` (``.hdr`` or ``.img``; both files of the pair are written)."""
        if Path(filename).suffix.lower() not in (".hdr", ".img"):
            raise ValueError(f"Analyze 7.5 files end in .hdr or .img, got {filename}")
        ImageWriter.write(self, filename, verbose=verbose)  # logging only
        image = self.create_backend_obj(self.data_obj, affine=self.affine, dtype=self.output_dtype, **obj_kwargs)
        nib.save(image, str(filename))

    @classmethod
    def create_backend_obj(
        cls, data_array: NdarrayOrTensor, affine: NdarrayOrTensor | None = None, dtype: DtypeLike = None, **kwargs: Any
    ) -> nib.AnalyzeImage:
        """An ``AnalyzeImage`` of the channel-last ``data_array`` ``[X, Y, Z, ...]``, reoriented to L, A, S."""
        array = convert_data_type(data_array, np.ndarray)[0]
        if dtype is not None:
            array = array.astype(dtype, copy=False)
        if array.dtype.type not in _ANALYZE_DTYPES:
            supported = [d.__name__ for d in _ANALYZE_DTYPES]
            raise ValueError(f"Analyze 7.5 cannot store {array.dtype}; use one of {supported}")
        matrix = np.eye(4) if affine is None else np.asarray(convert_data_type(affine, np.ndarray)[0], dtype=float)
        array, matrix = to_analyze_orientation(array, matrix)
        return nib.AnalyzeImage(array, matrix, header=kwargs.pop("header", None))


def prediction_saver(
    keys: Hashable | Sequence[Hashable],
    output_dir: str | os.PathLike,
    output_format: str = "nifti",
    output_postfix: str = "seg",
    **kwargs: Any,
) -> SaveImaged:
    """``SaveImaged`` for raw-valued label maps: uint8, no resampling, NIfTI, Analyze 7.5, NRRD or MetaImage.

    Args:
        keys: keys of the predictions, ``[1, *spatial]`` raw label maps carrying the input's metadata.
        output_dir: destination folder; files are named ``<input name>_<postfix>.<ext>`` (a DICOM series'
            input name is its folder's).
        output_format: ``"nifti"`` (default, ``.nii.gz``), ``"analyze"`` (``.hdr`` + ``.img``), ``"nrrd"`` or
            ``"mha"`` (ITK); each keeps the input's spacing, origin and direction.
        output_postfix: appended to the input file name.
        kwargs: further ``SaveImaged`` arguments (e.g. ``separate_folder=False``), overriding the defaults.
    """
    formats = {
        "nifti": {"output_ext": ".nii.gz"},
        "analyze": {"output_ext": ".hdr", "writer": AnalyzeWriter},
        "nrrd": {"output_ext": ".nrrd", "writer": ITKWriter},
        "mha": {"output_ext": ".mha", "writer": ITKWriter},
    }
    if output_format not in formats:
        raise ValueError(f"unknown output_format {output_format!r}; valid: {sorted(formats)}")
    options: dict[str, Any] = {"output_dtype": np.uint8, "resample": False, "mode": "nearest", **formats[output_format]}
    options.update(kwargs)
    return SaveImaged(keys=keys, output_dir=str(output_dir), output_postfix=output_postfix, **options)
