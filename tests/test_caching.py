"""cache_num_within_budget: the cases a CacheDataset keeps fit in the budget, counted from the real pipeline."""

from __future__ import annotations

import pytest
from monai.data import CacheDataset

from transrisk_components.bundle.caching import cache_num_within_budget, cached_bytes, header_voxels
from transrisk_components.bundle.transforms import train_transforms
from transrisk_components.data import fets2021_datalist


@pytest.fixture(scope="module")
def cases(data_fets_phantom) -> list[dict]:
    return fets2021_datalist(data_fets_phantom, modalities=["t1"])[:5]


def test_budget_bounds_the_cache(cases):
    transform = train_transforms("fets", "multiclass", [16, 16, 16])
    head = transform.get_index_of_first(lambda t: t.__class__.__name__.startswith("Rand"))
    per_case = [cached_bytes(transform(dict(c), end=head)) for c in cases]
    assert header_voxels(cases[0]) == 32**3 and len(set(per_case)) == 1
    budget_gb = 2.5 * per_case[0] / 1e9
    count = cache_num_within_budget(cases, transform, budget_gb)
    assert count == 2
    dataset = CacheDataset(cases, transform=transform, cache_num=count, progress=False)
    assert dataset.cache_num == 2 and cached_bytes(dataset._cache) <= budget_gb * 1e9
    assert cache_num_within_budget(cases, transform, 1.0) == len(cases)
    assert cache_num_within_budget(cases, transform, 0) == 0


def test_negative_budget(cases):
    with pytest.raises(ValueError, match="cache_gb must be >= 0"):
        cache_num_within_budget(cases, train_transforms("fets", "multiclass", [16, 16, 16]), -1)
