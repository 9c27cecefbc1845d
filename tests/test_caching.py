"""cache_num_within_budget: the cases a CacheDataset keeps fit in the budget, estimated from the headers."""

from __future__ import annotations

import pytest

from transrisk_components.bundle.engine.caching import cache_num_within_budget, cached_bytes, header_voxels
from transrisk_components.data import fets2021_datalist


@pytest.fixture(scope="module")
def cases(data_fets_phantom) -> list[dict]:
    return fets2021_datalist(data_fets_phantom, modalities=["t1"])[:5]


def test_budget_counts_leading_cases(cases):
    assert header_voxels(cases[0]) == 32**3
    case_gb = 4.5 * 32**3 / 1e9
    assert cache_num_within_budget(cases, 2.5 * case_gb, 4.5) == 2
    assert cache_num_within_budget(cases, 5 * case_gb, 4.5) == 5
    assert cache_num_within_budget(cases, 1.0, 4.5) == len(cases)
    assert cache_num_within_budget(cases, 0, 4.5) == 0


def test_cached_bytes_counts_arrays():
    import numpy as np
    import torch

    item = {"image": torch.zeros(1, 4, 4, 4), "label": torch.zeros(1, 4, 4, 4, dtype=torch.uint8),
            "idx": [np.zeros(3, np.int64)], "case_id": "a"}
    assert cached_bytes(item) == 4 * 64 + 64 + 24


def test_bad_budget(cases):
    with pytest.raises(ValueError, match="cache_gb >= 0"):
        cache_num_within_budget(cases, -1, 4.5)
