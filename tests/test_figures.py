"""The report figures exist, are real PNGs with content, and refuse malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from transrisk_components.reporting.figures import (
    axial_slice,
    plot_learning_curves,
    plot_region_dice,
    plot_risk_overlay,
    read_learning_curves,
)


def _assert_real_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100
    assert pixels[..., :3].std() > 0.02  # not a blank canvas
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def _volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.random((24, 20, 10)).astype(np.float32)
    label = np.zeros(image.shape, dtype=np.uint8)
    label[5:15, 5:12, 6] = 2
    label[8:11, 7:9, 6] = 4
    label[10:12, 10:12, 2] = 1
    risk = rng.random(image.shape)
    return image, label, risk


def test_axial_slice_has_most_foreground() -> None:
    _, label, _ = _volume()
    assert axial_slice(label) == 6
    assert axial_slice(np.zeros((4, 4, 9))) == 4


def test_plot_risk_overlay(tmp_path: Path) -> None:
    out = plot_risk_overlay(*_volume(), tmp_path / "figs" / "risk.png", title="case 1")
    assert out == tmp_path / "figs" / "risk.png"
    _assert_real_png(out)
    image, label, risk = _volume()
    with pytest.raises(ValueError, match="one shape"):
        plot_risk_overlay(image, label[:-1], risk, tmp_path / "bad.png")


def test_plot_learning_curves_from_csv_and_dict(tmp_path: Path) -> None:
    csv_path = tmp_path / "curves.csv"
    csv_path.write_text("epoch,train_loss,val_dice,lr\n1,0.9,,0.1\n2,0.7,0.4,0.1\n3,0.6,,0.1\n4,0.5,0.6,0.1\n")
    columns = read_learning_curves(csv_path)
    assert columns["val_dice"][1] == 0.4 and np.isnan(columns["val_dice"][0])
    _assert_real_png(plot_learning_curves(csv_path, tmp_path / "a" / "curves.png"))
    curves = {"epoch": [1, 2, 3], "train_loss": [1.0, 0.8, 0.7], "val_dice": [None, 0.5, 0.55]}
    _assert_real_png(plot_learning_curves(curves, tmp_path / "b" / "curves.png"))
    with pytest.raises(ValueError, match="val_dice"):
        plot_learning_curves({"epoch": [1], "train_loss": [1.0]}, tmp_path / "c.png")
    (tmp_path / "bad.csv").write_text("epoch,loss\n1,0.5\n")
    with pytest.raises(ValueError, match="missing column"):
        read_learning_curves(tmp_path / "bad.csv")


def _summary(dice: list[float | None]) -> dict:
    regions = {}
    for name, mean in zip(("ET", "TC", "WT"), dice):
        std = None if mean is None else 0.1
        regions[name] = {"dice": {"mean": mean, "std": std, "median": mean, "n": 3, "n_nan": 0}}
    return {"dataset": "fets", "task": "multiclass", "n_cases": 3, "regions": regions}


def test_plot_region_dice_one_and_several_methods(tmp_path: Path) -> None:
    json_path = tmp_path / "summary.json"
    json_path.write_text(json.dumps(_summary([0.6, 0.7, 0.8])))
    _assert_real_png(plot_region_dice(json_path, tmp_path / "one" / "dice.png"))
    methods = {"fine-tuning": json_path, "risk-weighted": _summary([0.65, None, 0.85])}
    _assert_real_png(plot_region_dice(methods, tmp_path / "two" / "dice.png", title="FeTS"))
    with pytest.raises(ValueError, match="regions"):
        plot_region_dice({"x": {"dice": 1.0}}, tmp_path / "bad.png")
