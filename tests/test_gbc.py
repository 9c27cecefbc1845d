"""The Gaussian Bhattacharyya coefficient (``method.gbc``) on synthetic features whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from transrisk_components.method.gbc import gaussian_bhattacharyya, gbc_score


def _classes(distance: float, n: int = 2000, dims: int = 4, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``classes`` unit Gaussians ``[n * classes, dims]`` whose means lie ``distance`` apart along the axes."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n * classes, dims, generator=generator)
    labels = torch.arange(classes).repeat_interleave(n)
    features[:, 0] += distance * labels
    return features, labels


def test_identical_gaussians_have_coefficient_one_and_distant_ones_near_zero() -> None:
    mean, var = torch.zeros(3), torch.ones(3)
    assert float(gaussian_bhattacharyya(mean, var, mean, var)) == pytest.approx(1.0)
    assert float(gaussian_bhattacharyya(mean, var, mean + 20, var)) < 1e-10
    # the closed form for one dimension, equal variances: exp(-d^2 / 8)
    assert float(gaussian_bhattacharyya(mean[:1], var[:1], mean[:1] + 2, var[:1])) == pytest.approx(math.exp(-0.5))


def test_separable_features_score_better_than_overlapping_ones() -> None:
    separable = gbc_score(*_classes(10.0), num_classes=3)
    overlapping = gbc_score(*_classes(0.5), num_classes=3)
    same = gbc_score(*_classes(0.0), num_classes=3)
    assert separable > overlapping > same
    assert separable == pytest.approx(0.0, abs=1e-3)  # no overlap
    assert same == pytest.approx(-6.0, abs=0.05)  # 3 classes, 6 ordered pairs, each coefficient ~1


def test_absent_classes_are_left_out_and_one_class_gives_nan() -> None:
    features, labels = _classes(10.0, classes=2)
    assert gbc_score(features, labels, num_classes=4) == pytest.approx(0.0, abs=1e-3)
    assert math.isnan(gbc_score(features[labels == 0], labels[labels == 0], num_classes=2))


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match=r"features \[N, D\] and labels \[N\]"):
        gbc_score(torch.zeros(5, 2), torch.zeros(4, dtype=torch.long), num_classes=2)
