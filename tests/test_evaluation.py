"""Regions, per-case metrics with known values, empty-region rules, reports and the evaluator handler."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer

from transrisk_components.bundle.handlers.metric_files import RegionMetricsWriter, write_case_csv, write_summary_json
from transrisk_components.bundle.handlers.metrics import (
    CaseScore,
    RegionMetrics,
    region_masks,
    region_names,
    score_regions,
    stack_regions,
    summarise,
    voxel_spacing,
)


def _all_classes() -> torch.Tensor:
    """[1, 1, 4, 1, 1] class map holding classes 0, 1, 2, 3 once each."""
    return torch.arange(4).reshape(1, 1, 4, 1, 1)


def test_fets_regions_are_et_tc_wt_in_challenge_order() -> None:
    class_map = _all_classes()  # classes 0,1,2,3 = raw 0,1,2,4
    assert region_names("fets", "multiclass") == ("ET", "TC", "WT")
    stacked = stack_regions(class_map, "fets", "multiclass")
    assert stacked.shape == (1, 3, 4, 1, 1) and stacked.dtype == torch.bool
    assert stacked[0, :, :, 0, 0].int().tolist() == [
        [0, 0, 0, 1],  # ET = raw 4
        [0, 1, 0, 1],  # TC = raw 1 | 4
        [0, 1, 1, 1],  # WT = raw 1 | 2 | 4
    ]


def test_iseg_regions_and_binary_tasks() -> None:
    masks = region_masks(_all_classes(), "iseg", "multiclass")
    assert list(masks) == ["CSF", "GM", "WM"]
    assert [m[0, 0, :, 0, 0].int().tolist() for m in masks.values()] == [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    binary = torch.tensor([0, 1, 1, 0]).reshape(1, 1, 4, 1, 1)
    masks = region_masks(binary, "fets", "TC")
    assert list(masks) == ["TC"]
    assert masks["TC"][0, 0, :, 0, 0].int().tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize(
    ("class_map", "dataset", "task", "match"),
    [
        (torch.tensor([0, 4]).reshape(1, 1, 2, 1, 1), "fets", "multiclass", "class indices"),  # raw label
        (torch.tensor([0, 2]).reshape(1, 1, 2, 1, 1), "fets", "ET", "class indices"),  # binary has 0/1 only
        (torch.zeros(1, 1, 2, 1, 1), "fets", "NET", "unknown fets task"),
        (torch.zeros(1, 1, 2, 1, 1), "brats", "multiclass", "unknown dataset"),
        (torch.zeros(1, 4, 2, 1, 1), "fets", "multiclass", r"\[B, 1, \*spatial\]"),
    ],
)
def test_region_masks_rejects_bad_input(class_map: torch.Tensor, dataset: str, task: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        region_masks(class_map, dataset, task)


def _cube(lo: tuple[int, int, int], size: int, shape: tuple[int, int, int] = (12, 12, 12)) -> torch.Tensor:
    mask = torch.zeros(1, 1, *shape, dtype=torch.bool)
    mask[0, 0, lo[0] : lo[0] + size, lo[1] : lo[1] + size, lo[2] : lo[2] + size] = True
    return mask


def test_known_dice_and_distances_use_spacing_per_axis() -> None:
    # half-overlapping cubes: Dice = 2 * 32 / (64 + 64)
    overlap = score_regions(_cube((2, 2, 2), 4), _cube((2, 2, 4), 4))
    assert overlap["dice"].item() == pytest.approx(0.5)
    # single voxels 3 apart along the last axis: every surface distance is 3 voxels
    pred, label = _cube((2, 2, 2), 1), _cube((2, 2, 5), 1)
    voxels = score_regions(pred, label)
    assert voxels["dice"].item() == 0.0
    assert voxels["hd95"].item() == pytest.approx(3.0)
    assert voxels["asd"].item() == pytest.approx(3.0)
    mm = score_regions(pred, label, spacing=[(0.5, 1.0, 2.0)])
    assert mm["hd95"].item() == pytest.approx(6.0)
    assert mm["asd"].item() == pytest.approx(6.0)
    along_x = score_regions(_cube((2, 2, 2), 1), _cube((5, 2, 2), 1), spacing=[(0.5, 1.0, 2.0)])
    assert along_x["hd95"].item() == pytest.approx(1.5)


def test_hd95_ignores_the_worst_five_percent() -> None:
    label = torch.zeros(1, 1, 64, 3, 3, dtype=torch.bool)
    label[0, 0, :, 1, 1] = True  # a line of 64 voxels
    pred = label.clone()
    pred[0, 0, 63, 1, 1] = False
    pred[0, 0, 62, 1, 1] = False  # the reference's last voxel is now 2 voxels from the prediction
    scores = score_regions(pred, label)
    assert scores["hd95"].item() == pytest.approx(0.0)  # 2 of 126 surface points are far: below the 95th
    assert scores["asd"].item() > 0.0


def test_empty_regions() -> None:
    empty, cube = _cube((0, 0, 0), 0), _cube((2, 2, 2), 3)
    both = score_regions(empty, empty)
    assert (both["dice"].item(), both["hd95"].item(), both["asd"].item()) == (1.0, 0.0, 0.0)
    for pred, label in ((empty, cube), (cube, empty)):
        one = score_regions(pred, label)
        assert one["dice"].item() == 0.0
        assert math.isnan(one["hd95"].item()) and math.isnan(one["asd"].item())


def test_region_metrics_from_logits_and_summary_skips_nan() -> None:
    label = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    label[:, :, 2:6, 2:6, 2:6] = 2  # edema cube in both cases
    label[0, :, 3:5, 3:5, 3:5] = 3  # case a also has enhancing tumour
    logits = F.one_hot(label[:, 0], 4).permute(0, 4, 1, 2, 3).float() * 5.0  # perfect prediction
    logits[0, :, 3:5, 3:5, 3:5] = torch.tensor([0.0, 0.0, 5.0, 0.0]).view(4, 1, 1, 1)  # ...except ET in a
    metrics = RegionMetrics("fets", "multiclass")
    rows = metrics.update(logits, label, ["a", "b"], spacing=[(1.0, 1.0, 1.0)] * 2)
    by_key = {(r.case_id, r.region): r for r in rows}
    assert [r.region for r in rows] == ["ET", "TC", "WT", "ET", "TC", "WT"]
    assert by_key["a", "ET"].dice == 0.0 and math.isnan(by_key["a", "ET"].hd95)
    assert by_key["a", "TC"].dice == 0.0  # TC = necrotic | enhancing: reference has ET, prediction none
    assert by_key["a", "WT"].dice == 1.0 and by_key["a", "WT"].hd95 == 0.0
    assert by_key["b", "ET"].dice == 1.0 and by_key["b", "ET"].hd95 == 0.0  # both empty
    summary = metrics.summary()
    assert summary["n_cases"] == 2 and list(summary["regions"]) == ["ET", "TC", "WT"]
    et = summary["regions"]["ET"]
    assert et["dice"] == {"mean": 0.5, "std": 0.5, "median": 0.5, "n": 2, "n_nan": 0}
    assert et["hd95"]["n"] == 1 and et["hd95"]["n_nan"] == 1 and et["hd95"]["mean"] == 0.0
    with pytest.raises(ValueError, match="case ids"):
        metrics.update(logits, label, ["only-one"])


def test_summary_with_no_finite_value_is_null() -> None:
    rows = [CaseScore("a", "ET", 0.0, math.nan, math.nan)]
    assert summarise(rows)["regions"]["ET"]["hd95"] == {"mean": None, "std": None, "median": None, "n": 0, "n_nan": 1}


def test_writers_produce_strict_csv_and_json(tmp_path) -> None:
    rows = [CaseScore("c1", "CSF", 0.8, 1.5, 0.5), CaseScore("c1", "GM", 0.0, math.nan, math.nan)]
    csv_path = write_case_csv(rows, tmp_path / "out" / "cases.csv")
    with csv_path.open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == ["case_id", "region", "dice", "hd95", "asd"]
    assert table[1]["hd95"] == "nan" and float(table[0]["dice"]) == 0.8
    json_path = write_summary_json(summarise(rows), tmp_path / "out" / "summary.json")

    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    summary = json.loads(json_path.read_text(), parse_constant=refuse)
    assert summary["regions"]["GM"]["hd95"]["mean"] is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cases.csv", "summary.json"]  # no temp files


def test_voxel_spacing_from_rotated_affine() -> None:
    rotation = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = torch.eye(4)
    affine[:3, :3] = rotation @ torch.diag(torch.tensor([0.5, 2.0, 3.0]))
    assert voxel_spacing(affine) == pytest.approx((0.5, 2.0, 3.0))


class _ImageIsTheAnswer(torch.nn.Module):
    """Network stand-in: the input channel is a class map; returns its one-hot as logits [B, 4, *S]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x[:, 0].long(), 4).permute(0, 4, 1, 2, 3).float()


def test_writer_handler_on_a_supervised_evaluator(tmp_path) -> None:
    affine = torch.diag(torch.tensor([1.0, 1.0, 1.5, 1.0]))
    label = torch.zeros(1, 8, 8, 8)
    label[:, 1:7, 1:7, 1:7] = 1  # necrotic core
    label[:, 2, 2, 2] = 3  # one enhancing voxel
    moved = label.clone()
    moved[:, 2, 2, 2], moved[:, 2, 2, 4] = 1, 3  # predicted 2 voxels (3 mm) further along z
    cases = [
        {
            "case_id": case_id,
            "image": MetaTensor(image, affine=affine),
            "label": MetaTensor(label.clone(), affine=affine),
        }
        for case_id, image in (("perfect", label.clone()), ("moved", moved))
    ]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(cases), batch_size=2),
        network=_ImageIsTheAnswer(),
        inferer=SimpleInferer(),
    )
    writer = RegionMetricsWriter(tmp_path / "eval", dataset="fets", task="multiclass")
    writer.attach(evaluator)
    evaluator.run()
    with (tmp_path / "eval" / "metrics_per_case.csv").open(newline="") as handle:
        rows = {(r["case_id"], r["region"]): r for r in csv.DictReader(handle)}
    assert len(rows) == 6
    assert float(rows["perfect", "ET"]["dice"]) == 1.0
    assert float(rows["moved", "ET"]["dice"]) == 0.0
    assert float(rows["moved", "ET"]["hd95"]) == pytest.approx(3.0)  # spacing read from the label's affine
    assert float(rows["moved", "WT"]["dice"]) == 1.0
    summary = json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())
    assert (summary["dataset"], summary["task"], summary["n_cases"]) == ("fets", "multiclass", 2)
    assert summary["regions"]["ET"]["dice"]["mean"] == pytest.approx(0.5)


def test_writer_gathers_over_ranks_and_counts_a_padded_case_once(tmp_path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        writer = RegionMetricsWriter(tmp_path / "eval", dataset="iseg", task="GM")
        label = torch.zeros(1, 1, 6, 6, 6)
        label[:, :, 1:4, 1:4, 1:4] = 1
        for _ in range(2):  # a padding sampler hands the same case to the evaluator twice
            writer.metrics.update(label, label, ["subject-1"])
        writer.write()
    finally:
        dist.destroy_process_group()
    summary = json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())
    assert summary["n_cases"] == 1 and summary["regions"]["GM"]["dice"]["n"] == 1
