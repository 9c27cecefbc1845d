"""The per-region composite of the candidates that safe transfer scores (``safe#composites``), beside the candidates.

For each evaluation region (FeTS multi-class: ET, TC, WT; iSeg: CSF, GM, WM) the candidate with the highest mean
validation Dice on that region (a tie goes to the one listed first); when that is not one candidate for every region,
the composite of those candidates (:class:`~transrisk_components.bundle.engine.composite.RegionComposite`) is scored
on the same validation cases by the same rule, listed after the candidates and ensembles, and kept only when it beats
every one of them by more than the tie margin. Its assignment is chosen on the very cases that then score it, so its
validation score leans optimistic; the test cases of a study say by how much. A binary task has one region and so no
composite.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from transrisk_components.bundle.handlers.metrics import region_masks
from transrisk_components.data.registry import get_dataset, num_classes

__all__ = ["COMPOSITE", "region_assignment", "region_signatures"]

#: The composite's name among the candidates; a candidate may not be so named (with ``safe#composites true``).
COMPOSITE = "composite_regions"

CaseDice = Mapping[str, Mapping[str, float]]


def region_signatures(dataset: str, task: str) -> tuple[tuple[str, ...], torch.Tensor]:
    """The evaluation regions of ``task`` (report order) and the ``(C, R)`` table, 1 where class ``c`` belongs to
    region ``r``: FeTS multi-class ``[[0,0,0], [0,1,1], [0,0,1], [1,1,1]]`` (background, necrosis, oedema, enhancing
    against ET, TC, WT)."""
    classes = num_classes(get_dataset(dataset), task)
    masks = region_masks(torch.arange(classes).view(1, 1, classes, 1, 1), dataset, task)
    return tuple(masks), torch.stack([mask.flatten() for mask in masks.values()], dim=1).float()


def region_assignment(validation: Mapping[str, CaseDice], regions: tuple[str, ...]) -> dict[str, str] | None:
    """Region -> the candidate with the highest mean validation Dice on it (candidate order breaks ties; a region
    a candidate has no finite Dice for counts as its lowest), or ``None`` when one candidate is best on every region.

    Args:
        validation: candidate -> ``{case_id: {region: dice}}``, the single candidates only, in candidate order.
        regions: the regions to assign, in report order.
    """
    def mean_dice(candidate: str, region: str) -> float:
        values = [cases[region] for cases in validation[candidate].values() if region in cases and cases[region] == cases[region]]
        return sum(values) / len(values) if values else float("-inf")

    assignment = {region: max(validation, key=lambda name: mean_dice(name, region)) for region in regions}
    return assignment if len(set(assignment.values())) > 1 else None
