"""The risk stage's cache: its key, its folder layout, its manifest and the temporary files between the passes.

Layout of one cache folder ``<cache_root>/<key>/`` (:class:`RiskCache`):

- ``<case_id>_risk.nii.gz``: one risk map per target training case, on the image grid with the image's affine,
  written atomically;
- ``manifest.json`` (:data:`MANIFEST`): what the stage computed, written atomically and last; it names the maps
  relative to its folder, so a moved cache still reads. A folder whose manifest is complete is reused;
- ``.source_probabilities/<case_id>.pt`` (:data:`KEPT`, :class:`KeptPass`): what the source pass keeps for the
  later passes, one file per case. They are the stage's own temporaries: deleted when the maps are written (or the
  stage fails), and any a killed run left are deleted before the stage computes again, so they are never reused.

``key`` is the digest of the risk stage's fingerprint (:mod:`transrisk_components.bundle.workflow.fingerprint`: its
resolved config, the size and mtime of every image and label file, the source model's identity and the package
version), given by the run.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from transrisk_components.bundle.io.risk_manifest import MANIFEST
from transrisk_components.utils.io import (
    atomic_torch_save,
    atomic_write,
    atomic_write_text,
    load_checkpoint,
    remove_partial_writes,
)

__all__ = ["KEPT", "MANIFEST", "KeptPass", "RiskCache"]

#: Sub-folder of a cache folder holding what pass 1 keeps for the later passes (one file per case, temporary).
KEPT = ".source_probabilities"


@dataclass
class KeptPass:
    """One case's source pass as the later passes need it: the voxels of its statistics mask only.

    On disk (:meth:`save`) it takes ``Cs * 4 + 1`` bytes per masked voxel with float32 probabilities (``Cs * 2 + 1``
    with float16) plus 1/8 byte per voxel for the mask.

    Attributes:
        probs: ``[1, Cs, n]`` source state probabilities at the ``n`` voxels of ``mask`` (row-major order).
        label: ``[1, 1, n]`` uint8 target classes at those voxels.
        mask: ``[1, 1, *S]`` bool statistics mask.
        affine: the image's 4x4 affine.
    """

    probs: torch.Tensor
    label: torch.Tensor
    mask: torch.Tensor
    affine: np.ndarray

    @classmethod
    def from_grid(cls, probs: torch.Tensor, label: torch.Tensor, mask: torch.Tensor, affine: np.ndarray) -> KeptPass:
        """From ``probs [1, Cs, *S]``, ``label [1, 1, *S]`` and ``mask [1, 1, *S]`` on the image grid."""
        inside = mask[0, 0]
        return cls(probs[:, :, inside], label[:, :, inside], mask, affine)

    def save(self, path: Path, dtype: torch.dtype) -> None:
        """Write it to ``path`` atomically, the probabilities as ``dtype``, the mask as packed bits."""
        bits = np.packbits(self.mask.cpu().numpy().reshape(-1))
        record = {
            "probs": self.probs.to(dtype).cpu(),
            "label": self.label.cpu(),
            "mask_bits": torch.from_numpy(bits),
            "shape": list(self.mask.shape),
            "affine": torch.from_numpy(self.affine),
        }
        atomic_torch_save(record, path)

    @classmethod
    def load(cls, path: Path, device: torch.device) -> KeptPass:
        """Read what :meth:`save` wrote, on ``device``; the probabilities as float32."""
        record = load_checkpoint(
            path, "delete it; the risk stage recomputes its temporary files", map_location="cpu", weights_only=True
        )
        shape = record["shape"]
        bits = np.unpackbits(record["mask_bits"].numpy(), count=math.prod(shape))
        mask = torch.from_numpy(bits.astype(bool).reshape(shape))
        probs = record["probs"].to(device, torch.float32)
        return cls(probs, record["label"].to(device), mask.to(device), record["affine"].numpy())


class RiskCache:
    """One cache folder ``<root>/<key>/`` of the risk stage (see the module docstring for its layout).

    Args:
        root: folder holding one sub-folder per cache key (the bundles' ``risk_dir``).
        key: the cache key.
    """

    def __init__(self, root: Path, key: str) -> None:
        self.folder = Path(root) / key

    @property
    def key(self) -> str:
        """The cache key: the folder's name."""
        return self.folder.name

    def complete_manifest(self) -> dict[str, Any] | None:
        """The manifest when the folder holds a complete one and every map it names, else ``None``.

        A manifest of an older version, without the per-class table ``"classes"`` or the joint ``"joint"``, is not
        complete (the stage recomputes).
        """
        path = self.folder / MANIFEST
        if not path.is_file():
            return None
        manifest = json.loads(path.read_text())
        if {"classes", "joint"} <= set(manifest) and all((self.folder / c["risk"]).is_file() for c in manifest["cases"].values()):
            return manifest
        return None

    def remove_leftovers(self) -> None:
        """Delete the partial writes and kept passes a killed run left (call on one rank, holding the bundle's lock)."""
        remove_partial_writes(self.folder)
        self.remove_kept_folder()

    def kept_path(self, case_id: str) -> Path:
        """Where pass 1 keeps the :class:`KeptPass` of ``case_id``."""
        return self.folder / KEPT / f"{case_id}.pt"

    def remove_kept(self, case_ids: Iterable[str]) -> None:
        """Delete the kept passes of ``case_ids`` (those that exist)."""
        for case_id in case_ids:
            self.kept_path(case_id).unlink(missing_ok=True)

    def remove_kept_folder(self) -> None:
        """Delete the folder of the kept passes with whatever it holds."""
        shutil.rmtree(self.folder / KEPT, ignore_errors=True)

    def write_map(self, case_id: str, risk_map: np.ndarray, affine: np.ndarray) -> str:
        """Write ``<case_id>_risk.nii.gz`` atomically from ``risk_map [*S]`` float32 and the 4x4 ``affine``; return
        its file name (relative to the folder, as the manifest names it)."""
        path = self.folder / f"{case_id}_risk.nii.gz"
        atomic_write(path, lambda tmp, r=risk_map, a=affine: nib.save(nib.Nifti1Image(r, a), tmp), suffix=".nii.gz")
        return path.name

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write ``manifest.json`` atomically: the last write of a computation, the one that makes the folder
        reusable."""
        atomic_write_text(self.folder / MANIFEST, json.dumps(manifest, indent=2))

    def map_path(self, manifest: dict[str, Any], case_id: str) -> Path:
        """The path of ``case_id``'s map as ``manifest`` names it."""
        return self.folder / manifest["cases"][case_id]["risk"]
