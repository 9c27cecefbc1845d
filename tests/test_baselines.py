"""L2-SP and top-k cross-entropy baselines."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from transrisk_components.method.baselines import L2SPLoss, TopKDiceCELoss


def tiny_unet(out_channels: int) -> UNet:
    return UNet(spatial_dims=3, in_channels=1, out_channels=out_channels, channels=(4, 8), strides=(2,))


@pytest.fixture()
def source_ckpt(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "source.pt"
    torch.save(tiny_unet(2).state_dict(), path)
    return path


def test_l2sp_penalty_zero_at_source_weights_and_grows_away(source_ckpt):
    network = tiny_unet(2)
    network.load_state_dict(torch.load(source_ckpt))
    loss = L2SPLoss(DiceCELoss(to_onehot_y=True, softmax=True), network, source_ckpt, alpha=1.0, beta=0.0)
    assert loss.penalty().item() == pytest.approx(0.0)
    with torch.no_grad():
        next(network.parameters()).add_(0.1)
    first = next(network.parameters())
    assert loss.penalty().item() == pytest.approx(0.5 * 0.01 * first.numel(), rel=1e-4)


def test_l2sp_decays_parameters_without_source_value(source_ckpt):
    network = tiny_unet(3)  # output head shape differs from the 2-class source
    loss = L2SPLoss(DiceCELoss(to_onehot_y=True, softmax=True), network, source_ckpt, alpha=0.0, beta=1.0)
    unanchored = [p for n, p in network.named_parameters() if n not in loss._anchored]
    assert unanchored, "the 3-class head should have no source value"
    expected = sum(0.5 * p.pow(2).sum() for p in unanchored)
    torch.testing.assert_close(loss.penalty(), expected)


def test_l2sp_loss_adds_penalty_and_backpropagates(source_ckpt):
    network = tiny_unet(2)
    base = DiceCELoss(to_onehot_y=True, softmax=True)
    loss = L2SPLoss(base, network, source_ckpt, alpha=0.5, beta=0.5)
    image, labels = torch.randn(1, 1, 8, 8, 8), torch.randint(0, 2, (1, 1, 8, 8, 8))
    logits = network(image)
    value = loss(logits, labels)
    torch.testing.assert_close(value, base(logits, labels) + loss.penalty())
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in network.parameters())
    assert "source_0" not in loss.state_dict() and not list(loss.parameters())


def test_l2sp_missing_checkpoint_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        L2SPLoss(DiceCELoss(), tiny_unet(2), tmp_path / "missing.pt")


def test_topk_with_all_voxels_equals_mean_ce_plus_dice():
    logits, labels = torch.randn(2, 3, 4, 4, 4), torch.randint(0, 3, (2, 1, 4, 4, 4))
    torch.testing.assert_close(
        TopKDiceCELoss(k_percent=100)(logits, labels), DiceCELoss(to_onehot_y=True, softmax=True)(logits, labels)
    )


def test_topk_focuses_on_hardest_voxels():
    logits, labels = torch.randn(2, 3, 4, 4, 4), torch.randint(0, 3, (2, 1, 4, 4, 4))
    hard = TopKDiceCELoss(k_percent=10, lambda_dice=0)(logits, labels)
    everything = TopKDiceCELoss(k_percent=100, lambda_dice=0)(logits, labels)
    assert hard > everything
    with pytest.raises(ValueError, match="k_percent"):
        TopKDiceCELoss(k_percent=0)
