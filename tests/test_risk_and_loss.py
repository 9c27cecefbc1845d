"""Risk maps, weighting schemes and the risk-weighted loss."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss

from transrisk_components.method.losses import RiskWeightedLoss
from transrisk_components.method.risk import WEIGHT_SCHEMES, risk_to_weights, transfer_risk

SHAPE = (2, 1, 6, 5, 4)
#: Whole-case foreground counts of the two samples of :func:`random_batch` (cases larger than the patches).
CASE_FG = torch.tensor([300, 500])


def random_batch(seed: int, num_classes: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits ``[2, C, 6, 5, 4]``, labels ``[2, 1, 6, 5, 4]`` and risk in [0, 1] of the label shape."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(SHAPE[0], num_classes, *SHAPE[2:], generator=gen, dtype=torch.float64)
    labels = torch.randint(0, num_classes, SHAPE, generator=gen).double()
    risk = torch.rand(SHAPE, generator=gen, dtype=torch.float64)
    return logits, labels, risk


@pytest.mark.parametrize("normalization", ["complement", "minmax", "neglog_minmax"])
def test_risk_in_unit_interval_and_non_increasing_in_transferability(normalization):
    t = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0))
    risk = transfer_risk(t, normalization)
    assert risk.shape == t.shape and risk.min() >= 0 and risk.max() <= 1
    for b in range(SHAPE[0]):
        order = torch.argsort(t[b].flatten())
        assert torch.all(torch.diff(risk[b].flatten()[order]) <= 1e-7)
    if normalization != "complement":
        assert torch.allclose(risk.flatten(1).max(1).values, torch.ones(2))
        assert torch.allclose(risk.flatten(1).min(1).values, torch.zeros(2))


@pytest.mark.parametrize("normalization", ["minmax", "neglog_minmax"])
def test_minmax_on_constant_image_is_zero(normalization):
    assert torch.all(transfer_risk(torch.full(SHAPE, 0.3), normalization) == 0)


def test_neglog_minmax_is_minus_log_t_rescaled_per_image():
    t = torch.tensor([0.5, 0.25, 1.0, 0.125], dtype=torch.float64).view(1, 1, 4, 1, 1)
    expected = torch.tensor([1 / 3, 2 / 3, 0.0, 1.0], dtype=torch.float64).view(1, 1, 4, 1, 1)  # -log2 T = 1, 2, 0, 3
    torch.testing.assert_close(transfer_risk(t, "neglog_minmax"), expected)
    # per image: a second image with other values does not change the first one's risk
    both = torch.cat([t, torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64).view(1, 1, 4, 1, 1)])
    torch.testing.assert_close(transfer_risk(both, "neglog_minmax")[:1], expected)


def test_neglog_minmax_floors_t_so_one_hopeless_voxel_does_not_squash_the_rest():
    t = torch.tensor([0.0, 1e-30, 1e-3, 1.0], dtype=torch.float64).view(1, 1, 4, 1, 1)
    risk = transfer_risk(t, "neglog_minmax").flatten()
    torch.testing.assert_close(risk, torch.tensor([1.0, 1.0, 0.5, 0.0], dtype=torch.float64))  # log floor 1e-6


def test_power10_weights_span_one_to_ten_at_strength_one():
    risk = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 3, 1, 1)
    torch.testing.assert_close(risk_to_weights(risk, "power10", 1.0).flatten(), torch.tensor([1.0, 10**0.5, 10.0]))
    torch.testing.assert_close(risk_to_weights(risk, "power10", 2.0).flatten(), torch.tensor([1.0, 10.0, 100.0]))


def test_inverse_weights_of_complement_risk_are_exp_minus_leep():
    leep = torch.tensor([0.0, -0.5, -2.0, -4.0], dtype=torch.float64).view(1, 1, 4, 1, 1)  # log T of a location
    risk = transfer_risk(leep.exp(), "complement")
    torch.testing.assert_close(risk_to_weights(risk, "inverse", 1.0), (-leep).exp())
    torch.testing.assert_close(risk_to_weights(risk, "inverse", 2.0), (-2 * leep).exp())
    capped = risk_to_weights(torch.ones(1, 1, 2, 1, 1), "inverse", 1.0)  # T = 0: capped, not infinite
    torch.testing.assert_close(capped, torch.full_like(capped, 100.0))


@pytest.mark.parametrize(
    "values, message",
    [(torch.full(SHAPE, 1.5), r"\[0, 1\]"), (torch.full(SHAPE, float("nan")), "NaN"), (torch.rand(2, 2, 3, 3, 3), "B, 1")],
)
def test_bad_transferability_raises(values, message):
    with pytest.raises(ValueError, match=message):
        transfer_risk(values)


def test_unknown_options_raise():
    with pytest.raises(ValueError, match="normalization"):
        transfer_risk(torch.rand(SHAPE), "zscore")
    with pytest.raises(ValueError, match="scheme"):
        risk_to_weights(torch.rand(SHAPE), "quadratic")
    with pytest.raises(ValueError, match="strength"):
        risk_to_weights(torch.rand(SHAPE), "linear", -1.0)
    with pytest.raises(ValueError, match="normalization"):
        RiskWeightedLoss(normalization="batch")
    with pytest.raises(ValueError, match="ce_voxels"):
        RiskWeightedLoss(ce_voxels="tumour")


@pytest.mark.parametrize("scheme", WEIGHT_SCHEMES)
def test_weights_never_decrease_with_risk(scheme):
    risk = torch.linspace(0, 1, 101).view(1, 1, 101, 1, 1)
    weights = risk_to_weights(risk, scheme, strength=2.0)
    assert torch.all(torch.diff(weights.flatten()) >= 0)
    assert torch.all(weights >= 1)


def test_uniform_weights_with_voxel_normalisation_equal_monai_dice_ce():
    logits, labels, risk = random_batch(1)
    ours = RiskWeightedLoss(scheme="uniform", normalization="voxels")(logits, labels, risk)
    monai = DiceCELoss(to_onehot_y=True, softmax=True)(logits, labels)
    torch.testing.assert_close(ours, monai, rtol=1e-12, atol=1e-12)


def test_without_background_in_dice_matches_monai():
    logits, labels, _ = random_batch(2)
    ours = RiskWeightedLoss(scheme="uniform", normalization="voxels", include_background=False, lambda_ce=0.5)
    monai = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, lambda_ce=0.5)
    torch.testing.assert_close(ours(logits, labels), monai(logits, labels), rtol=1e-12, atol=1e-12)


def test_foreground_normalisation_divides_by_the_whole_case_foreground_count():
    logits, labels, _ = random_batch(3)
    voxels = RiskWeightedLoss(scheme="uniform", normalization="voxels", lambda_dice=0)
    foreground = RiskWeightedLoss(scheme="uniform", normalization="foreground", lambda_dice=0)
    ce = torch.nn.functional.cross_entropy(logits, labels[:, 0].long(), reduction="none").flatten(1)
    expected = (ce.sum(1) / CASE_FG).mean()
    torch.testing.assert_close(foreground(logits, labels, None, CASE_FG), expected)
    assert foreground(logits, labels, None, torch.tensor([10, 10])) > voxels(logits, labels)
    with pytest.raises(ValueError, match="foreground_voxels"):
        foreground(logits, labels)


def test_tumour_free_patch_weighs_like_a_tumour_patch_of_its_case():
    """Same predictions, same case: a background-only patch must not weigh ~patch-size times more.

    Old code: the background patch's normaliser was its own foreground count clamped to 1, i.e. its CE was
    the *sum* over its voxels, while the tumour patch's was divided by its foreground count.
    """
    shape = (2, 1, 16, 16, 16)
    logits = torch.zeros(2, 2, *shape[2:], dtype=torch.float64)  # CE = log 2 at every voxel
    labels = torch.zeros(shape, dtype=torch.float64)
    labels[0, 0, :8] = 1  # patch 0 holds tumour (2048 voxels), patch 1 none
    loss = RiskWeightedLoss(scheme="uniform", normalization="foreground", lambda_dice=0)
    case_fg = torch.tensor([5000, 5000])  # both patches cut from one case with 5000 tumour voxels
    per_sample = [loss(logits[i : i + 1], labels[i : i + 1], None, case_fg[i : i + 1]) for i in range(2)]
    torch.testing.assert_close(per_sample[0], per_sample[1])
    torch.testing.assert_close(per_sample[1], torch.tensor(16**3 * torch.log(torch.tensor(2.0)).item() / 5000, dtype=torch.float64))


def test_case_without_foreground_falls_back_to_the_voxel_mean():
    logits, labels, _ = random_batch(11)
    foreground = RiskWeightedLoss(scheme="uniform", normalization="foreground", lambda_dice=0)
    voxels = RiskWeightedLoss(scheme="uniform", normalization="voxels", lambda_dice=0)
    torch.testing.assert_close(foreground(logits, labels, None, torch.tensor([0, 0])), voxels(logits, labels))
    with pytest.raises(ValueError, match="one count >= 0 per sample"):
        foreground(logits, labels, None, torch.tensor([5]))


def test_linear_scheme_weights_ce_by_one_plus_s_risk():
    logits, labels, risk = random_batch(4)
    loss = RiskWeightedLoss(scheme="linear", strength=3.0, lambda_dice=0)(logits, labels, risk, CASE_FG)
    ce = torch.nn.functional.cross_entropy(logits, labels[:, 0].long(), reduction="none")
    per_image = ((1 + 3.0 * risk[:, 0]) * ce).flatten(1).sum(1) / CASE_FG
    torch.testing.assert_close(loss, per_image.mean())


def test_weighted_dice_with_zero_risk_equals_unweighted():
    logits, labels, _ = random_batch(5)
    zero = torch.zeros(SHAPE, dtype=torch.float64)
    weighted = RiskWeightedLoss(dice="weighted", lambda_ce=0)(logits, labels, zero)
    unweighted = RiskWeightedLoss(dice="unweighted", lambda_ce=0)(logits, labels, zero)
    torch.testing.assert_close(weighted, unweighted)


def test_image_without_foreground_gives_finite_loss_and_gradients():
    logits, _, risk = random_batch(6)
    logits.requires_grad_(True)
    labels = torch.zeros(SHAPE, dtype=torch.float64)
    loss = RiskWeightedLoss(dice="weighted")(logits, labels, risk, torch.tensor([0, 0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("scheme", ["linear", "exponential", "power10", "inverse"])
@pytest.mark.parametrize("dice", ["unweighted", "weighted"])
def test_gradients_finite(scheme, dice):
    logits, labels, risk = random_batch(7)
    logits.requires_grad_(True)
    RiskWeightedLoss(scheme=scheme, strength=2.0, dice=dice)(logits, labels, risk, CASE_FG).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("scheme", ["linear", "exponential", "power10", "inverse"])
@pytest.mark.parametrize("dice", ["unweighted", "weighted"])
def test_risk_on_mispredicted_voxels_costs_more_than_on_correct_ones(scheme, dice):
    logits, labels, _ = random_batch(8)
    wrong = logits.argmax(1, keepdim=True) != labels.long()
    loss = RiskWeightedLoss(scheme=scheme, strength=2.0, dice=dice)
    risk_on_wrong = loss(logits, labels, wrong.double(), CASE_FG)
    risk_on_right = loss(logits, labels, (~wrong).double(), CASE_FG)
    assert risk_on_wrong > risk_on_right


def test_shape_mismatch_raises():
    logits, labels, risk = random_batch(9)
    with pytest.raises(ValueError, match="labels must have shape"):
        RiskWeightedLoss()(logits, labels[..., :-1], risk)
    with pytest.raises(ValueError, match="risk must have shape"):
        RiskWeightedLoss()(logits, labels, risk[..., :-1])


def test_weighted_dice_matches_formula():
    logits, labels, risk = random_batch(10)
    loss = RiskWeightedLoss(scheme="linear", strength=1.0, dice="weighted", lambda_ce=0)(logits, labels, risk)
    weights = 1 + risk
    probs = torch.softmax(logits, 1)
    target = torch.nn.functional.one_hot(labels[:, 0].long(), 3).movedim(-1, 1).double()
    intersection = (weights * probs * target).sum((2, 3, 4))
    denominator = (weights * (probs + target)).sum((2, 3, 4))
    expected = (1 - (2 * intersection + 1e-5) / (denominator + 1e-5)).mean()
    torch.testing.assert_close(loss, expected)


def test_foreground_ce_sums_over_label_voxels_only_over_the_case_foreground():
    logits, labels, risk = random_batch(12)
    loss = RiskWeightedLoss(scheme="power10", strength=1.0, ce_voxels="foreground", lambda_dice=0)
    ce = torch.nn.functional.cross_entropy(logits, labels[:, 0].long(), reduction="none")
    weighted = 10 ** risk[:, 0] * ce * (labels[:, 0] > 0)
    expected = (weighted.flatten(1).sum(1) / CASE_FG).mean()
    torch.testing.assert_close(loss(logits, labels, risk, CASE_FG), expected)
    # background logits do not enter the CE term at all ...
    moved = logits.clone()
    background = (labels == 0).expand_as(logits)
    moved[background] += torch.randn(int(background.sum()), generator=torch.Generator().manual_seed(0), dtype=moved.dtype)
    torch.testing.assert_close(loss(moved, labels, risk, CASE_FG), expected)
    # ... but they do with ce_voxels="all"
    every_voxel = RiskWeightedLoss(scheme="power10", strength=1.0, lambda_dice=0)
    assert every_voxel(moved, labels, risk, CASE_FG) != every_voxel(logits, labels, risk, CASE_FG)
