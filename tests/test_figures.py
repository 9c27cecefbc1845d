"""The report figures exist, are real PNGs with content, and refuse malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.axes
import matplotlib.figure
import matplotlib.image as mpimg
import numpy as np
import pytest

from transrisk_components.reporting.figures import (
    leep_axis_limits,
    plot_transfer_report,
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


def test_the_ranking_plot_shows_the_whole_leep_scale() -> None:
    """Three candidates 0.01 nats apart, just above a floor of -0.9: the axis runs from the floor to 0, so they look
    as close as they are."""
    low, high = leep_axis_limits([-0.9, -0.9, -0.9], [-0.89, -0.885, -0.88])
    assert low < -0.9 and high > 0.0
    assert 0.01 / (high - low) < 0.02, "a 0.01-nat spread is a sliver of the axis"


def test_the_transfer_report_figure_states_the_cases_choice_and_warnings(tmp_path: Path, monkeypatch) -> None:
    report = {
        "chosen": "scratch", "validation_cases": 1,
        "reason": "scratch: highest validation score 40.0; uncertain: 1 validation case (fewer than 5) ...",
        "candidates": {"risk_map": {"score": 0.2, "score_ci": [float("nan"), float("nan")], "regions": {"ET": 0.0, "WT": 0.4}},
                       "scratch": {"score": 0.4, "score_ci": [float("nan"), float("nan")], "regions": {"ET": 0.3, "WT": 0.5}}},
        "negative_transfer": [{"region": "ET", "scratch": "scratch", "best_transfer": "risk_map", "difference": 0.3}],
        "leep_dead_classes": {"classes": ["ET"]},
    }
    texts: list[str] = []
    original_text, original_title = matplotlib.figure.Figure.text, matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.figure.Figure, "text", lambda self, x, y, s, *a, **k: texts.append(s) or original_text(self, x, y, s, *a, **k))
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, s, *a, **k: texts.append(s) or original_title(self, s, *a, **k))
    _assert_real_png(plot_transfer_report(report, tmp_path / "report.png"))
    shown = " ".join(texts).replace("\n", " ").replace("     ", " ")
    assert "on 1 case(s)" in shown and "chosen: scratch" in shown and "uncertain" in shown
    assert "negative transfer in ET" in shown and "LEEP warned that the source sees nothing of ET" in shown


def test_the_transfer_report_figure_says_so_when_no_region_transferred_negatively(tmp_path: Path, monkeypatch) -> None:
    report = {
        "chosen": "risk_map", "validation_cases": 5, "reason": "risk_map: highest validation score 40.0",
        "candidates": {"risk_map": {"score": 0.4, "score_ci": [0.3, 0.5], "regions": {"ET": 0.4}},
                       "scratch": {"score": 0.2, "score_ci": [0.1, 0.3], "regions": {"ET": 0.2}}},
        "negative_transfer": [], "scratch_candidates": ["scratch"], "leep_dead_classes": {"classes": []},
    }
    texts: list[str] = []
    original_text = matplotlib.figure.Figure.text
    monkeypatch.setattr(matplotlib.figure.Figure, "text", lambda self, x, y, s, *a, **k: texts.append(s) or original_text(self, x, y, s, *a, **k))
    _assert_real_png(plot_transfer_report(report, tmp_path / "report.png"))
    assert "no region where training from scratch beat transfer" in " ".join(texts).replace("\n", " ")
