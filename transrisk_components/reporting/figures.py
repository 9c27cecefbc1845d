"""Report figures: risk-map overlays, learning curves and per-region Dice bars (matplotlib, Agg backend).

Every function writes its PNG atomically (a reader never sees half a file) and returns the path.

Inputs:

- :func:`plot_risk_overlay`: one case's image, label and transfer risk map, each ``[H, W, D]``.
- :func:`plot_learning_curves`: a *learning-curve CSV* with header ``epoch,train_loss,val_dice`` (one row
  per epoch; ``val_dice`` left empty on epochs without validation; other columns ignored), or the same
  as a mapping of column name -> per-epoch values (``None``/NaN for missing).
- :func:`plot_region_dice`: summary JSON files written by
  :func:`transrisk_components.bundle.handlers.metrics.write_summary_json` (or their loaded dicts), one per method.
- :func:`plot_transfer_report`: safe transfer's report
  (:func:`transrisk_components.bundle.workflow.report.transfer_report`).
- :func:`plot_criteria_forest`: paired differences with their seed CIs, each marked as meeting its criterion or not
  (e.g. a pre-registered hypothesis per scenario).
"""

from __future__ import annotations

import csv
import json
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from transrisk_components.utils.io import atomic_write  # noqa: E402

if TYPE_CHECKING:  # the bundle draws its figures without the study's statistics (and scipy) loaded
    from transrisk_components.reporting.results import PairedStatistics

__all__ = [
    "axial_slice",
    "CriterionEntry",
    "plot_criteria_forest",
    "plot_learning_curves",
    "plot_ranking_study",
    "plot_region_dice",
    "plot_risk_overlay",
    "plot_source_ranking",
    "plot_transfer_report",
    "leep_axis_limits",
    "read_learning_curves",
    "validation_curve",
]

LEARNING_CURVE_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "val_dice")


def _save(figure: Figure, out_png: str | os.PathLike) -> Path:
    try:
        return atomic_write(out_png, lambda tmp: figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    finally:
        plt.close(figure)


def axial_slice(label: np.ndarray) -> int:
    """Index along the last axis of ``label`` ``[H, W, D]`` with the most foreground (> 0) voxels.

    An all-background label gives the middle slice.
    """
    counts = (np.asarray(label) > 0).reshape(-1, label.shape[-1]).sum(axis=0)
    return int(np.argmax(counts)) if counts.any() else label.shape[-1] // 2


def plot_risk_overlay(
    image: np.ndarray,
    label: np.ndarray,
    risk: np.ndarray,
    out_png: str | os.PathLike,
    title: str = "",
) -> Path:
    """Three panels of one axial slice: image, image with label contours, and the risk heat map.

    Args:
        image: ``[H, W, D]`` intensities (any range; shown min-max scaled).
        label: ``[H, W, D]`` labels, raw values or classes (0 = background); one contour per value.
        risk: ``[H, W, D]`` transfer risk map, shown with a colour bar over its own range.
        out_png: destination PNG.
        title: figure title (e.g. the case id).

    The slice is :func:`axial_slice` of ``label``. Slices are drawn transposed with the origin at the
    bottom, so the first array axis runs left-right on screen.

    Raises:
        ValueError: the arrays are not 3-D or do not share a shape.
    """
    arrays = {"image": np.asarray(image), "label": np.asarray(label), "risk": np.asarray(risk)}
    shapes = {name: a.shape for name, a in arrays.items()}
    if any(a.ndim != 3 for a in arrays.values()) or len(set(shapes.values())) != 1:
        raise ValueError(f"plot_risk_overlay for {out_png}: expected three [H, W, D] arrays of one shape, got {shapes}")
    z = axial_slice(arrays["label"])
    img, lab, rsk = (a[..., z].T for a in arrays.values())
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    for ax, name in zip(axes, ("image", "label contours", "transfer risk")):
        ax.imshow(img, cmap="gray", origin="lower")
        ax.set_title(f"{name} (slice {z})")
        ax.axis("off")
    values = [v for v in np.unique(lab) if v != 0]
    colours = plt.get_cmap("tab10")
    for i, value in enumerate(values):
        axes[1].contour(lab == value, levels=[0.5], colors=[colours(i % 10)], linewidths=1.0)
    if values:
        handles = [Line2D([], [], color=colours(i % 10), label=f"label {v:g}") for i, v in enumerate(values)]
        axes[1].legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.6)
    heat = axes[2].imshow(rsk, cmap="inferno", origin="lower", alpha=0.85)
    figure.colorbar(heat, ax=axes[2], fraction=0.046, pad=0.04, label="risk")
    if title:
        figure.suptitle(title)
    return _save(figure, out_png)


def _float_or_nan(value: Any) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    return float(value)


def read_learning_curves(path: str | os.PathLike) -> dict[str, list[float]]:
    """Read a learning-curve CSV (``epoch,train_loss,val_dice`` and any ``val_dice_<region>`` columns) into
    column -> values (NaN for blanks)."""
    csv_path = Path(path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"learning-curve CSV not found: {csv_path}")
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in LEARNING_CURVE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {missing}; expected {list(LEARNING_CURVE_COLUMNS)}")
        rows = list(reader)
    return {c: [_float_or_nan(row[c]) for row in rows] for c in reader.fieldnames or LEARNING_CURVE_COLUMNS}


def validation_curve(path: str | os.PathLike) -> dict[int, dict[str, float]]:
    """The validation epochs of a learning-curve CSV: epoch -> region -> mean validation Dice (its
    ``val_dice_<region>`` columns)."""
    columns = read_learning_curves(path)
    regions = [c.removeprefix("val_dice_") for c in columns if c.startswith("val_dice_")]
    return {
        int(epoch): {r: columns[f"val_dice_{r}"][i] for r in regions}
        for i, epoch in enumerate(columns["epoch"])
        if not math.isnan(columns["val_dice"][i])
    }


def plot_learning_curves(
    metrics: str | os.PathLike | Mapping[str, Sequence[Any]], out_png: str | os.PathLike, title: str = ""
) -> Path:
    """Training loss and validation Dice per epoch, side by side; the Dice of each region (``val_dice_<region>``
    columns) beside their mean.

    Args:
        metrics: a learning-curve CSV path, or a mapping with the columns ``epoch``, ``train_loss`` and
            ``val_dice`` (equal lengths; ``None``/NaN where an epoch has no value), and optionally
            ``val_dice_<region>`` columns.
        out_png: destination PNG.
        title: the figure's title (e.g. the candidate's name); the epochs are added to it.

    Raises:
        ValueError: a column is missing, the columns differ in length, or there is no epoch.
    """
    if isinstance(metrics, Mapping):
        missing = [c for c in LEARNING_CURVE_COLUMNS if c not in metrics]
        if missing:
            raise ValueError(f"learning curves for {out_png}: missing column(s) {missing}")
        columns = {c: [_float_or_nan(v) for v in metrics[c]] for c in metrics}
    else:
        columns = read_learning_curves(metrics)
    lengths = {c: len(v) for c, v in columns.items()}
    if len(set(lengths.values())) != 1 or not columns["epoch"]:
        raise ValueError(f"learning curves for {out_png}: need equally long, non-empty columns, got {lengths}")
    epoch = np.asarray(columns["epoch"])
    figure, (loss_ax, dice_ax) = plt.subplots(1, 2, figsize=(10, 4))
    regions = [c for c in columns if c.startswith("val_dice_")]
    series = [(loss_ax, "train_loss", "train loss", "tab:blue", 2.0), (dice_ax, "val_dice", "mean over regions", "black", 2.0)]
    series += [(dice_ax, c, c[len("val_dice_"):], None, 1.0) for c in regions]
    for ax, column, label, colour, width in series:
        values = np.asarray(columns[column], dtype=float)
        shown = ~np.isnan(values)
        ax.plot(epoch[shown], values[shown], marker="o", markersize=3, color=colour, linewidth=width, label=label)
    for ax, label in ((loss_ax, "training loss"), (dice_ax, "validation Dice")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if regions:
        dice_ax.legend(fontsize=8)
    dice_ax.set_ylim(0.0, 1.0)
    figure.suptitle(f"{title + ': ' if title else ''}{int(epoch.max())} epochs")
    return _save(figure, out_png)


def _load_summary(source: str | os.PathLike | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        summary = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"summary JSON not found: {path}")
        summary = json.loads(path.read_text(encoding="utf-8"))
    if "regions" not in summary:
        where = "a dict" if isinstance(source, Mapping) else str(source)
        raise ValueError(f"not a region summary (no 'regions' key): {where}")
    return summary


def plot_region_dice(
    summaries: str | os.PathLike | Mapping[str, Any],
    out_png: str | os.PathLike,
    metric: str = "dice",
    title: str = "",
) -> Path:
    """Bar chart of a metric's mean per region, error bars one standard deviation, grouped by method.

    Args:
        summaries: one summary (JSON path or dict with a ``"regions"`` key), or a mapping
            method name -> summary for several methods side by side (e.g. ``{"fine-tuning": ...,
            "risk-weighted": ...}``). Regions follow the first summary's order.
        out_png: destination PNG.
        metric: ``"dice"`` (default), ``"hd95"`` or ``"asd"``.
        title: figure title.

    Regions without a value (mean ``None``) are drawn as empty bars.
    """
    single = isinstance(summaries, (str, os.PathLike)) or "regions" in summaries
    methods = {"": summaries} if single else dict(summaries)
    loaded = {name: _load_summary(source) for name, source in methods.items()}
    regions = list(next(iter(loaded.values()))["regions"])
    width = 0.8 / len(loaded)
    x = np.arange(len(regions))
    figure, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(regions) * max(1, len(loaded) / 2)), 4))
    for i, (name, summary) in enumerate(loaded.items()):
        stats = [summary["regions"].get(region, {}).get(metric, {}) for region in regions]
        means = [_float_or_nan(s.get("mean")) for s in stats]
        stds = [_float_or_nan(s.get("std")) for s in stats]
        ax.bar(x + (i - (len(loaded) - 1) / 2) * width, np.nan_to_num(means), width, yerr=np.nan_to_num(stds),
               capsize=3, label=name or None)
    ax.set_xticks(x, regions)
    ax.set_ylabel(metric if metric != "dice" else "Dice")
    if metric == "dice":
        ax.set_ylim(0.0, 1.05)
    if not single:
        ax.legend()
    if title:
        ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return _save(figure, out_png)


def _ci_text(ci: Sequence[float]) -> str:
    return "no CI (1 case)" if any(math.isnan(float(v)) for v in ci) else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def plot_transfer_report(report: Mapping[str, Any], out_png: str | os.PathLike) -> Path:
    """Safe transfer's report as one figure: each candidate's mean validation Dice per region (a bar of 0 is drawn
    as a marked line, labelled ``0``), the legend giving each candidate's score and its 95% CI over the validation
    cases; below, the number of validation cases, the choice and its reason (with the uncertainty warning), the
    regions of negative transfer and the LEEP warning.

    Args:
        report: ``{"chosen", "reason", "validation_cases", "candidates": {name: {"score", "score_ci", "regions",
            "stalled_regions"}}, "negative_transfer": [{"region", "scratch", "best_transfer", "difference"}],
            "leep_dead_classes": {"classes"}, "k_fold": None or {"folds", "pooled_cases", "runs",
            "runs_with_one_split", "final_run"}}`` (Dice in [0, 1]).
        out_png: the PNG path (written atomically).
    """
    candidates = dict(report["candidates"])
    regions = list(next(iter(candidates.values()))["regions"])
    width = 0.8 / len(candidates)
    x = np.arange(len(regions))
    figure, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(regions) * max(1, len(candidates) / 2)), 5.2))
    for i, (name, entry) in enumerate(candidates.items()):
        values = np.array([_float_or_nan(entry["regions"].get(r)) for r in regions])
        positions = x + (i - (len(candidates) - 1) / 2) * width
        chosen = " (chosen)" if name == report["chosen"] else ""
        label = f"{name}{chosen}: {100 * float(entry['score']):.1f} {_ci_text(entry['score_ci'])}"
        bars = ax.bar(positions, np.nan_to_num(values), width, label=label,
                      edgecolor="black" if chosen else "none", linewidth=1.5)
        for position, value, bar in zip(positions, values, bars):
            if not np.isnan(value) and value < 0.005:
                ax.plot([position - width / 2, position + width / 2], [0.0, 0.0], color=bar.get_facecolor(), linewidth=3)
                ax.text(position, 0.02, "0", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, regions)
    ax.set_ylabel("mean validation Dice")
    ax.set_ylim(0.0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="score over regions [95% CI over cases]", fontsize=8, title_fontsize=8, loc="upper left")
    k_fold = report.get("k_fold")
    scored = f" ({k_fold['folds']}-fold choice)" if k_fold else ""
    ax.set_title(f"safe transfer: validation Dice per region on {report['validation_cases']} case(s){scored}")
    notes = [f"chosen: {report['reason']}"]
    if k_fold:
        notes.append(f"{k_fold['final_run']} retrained on all {k_fold['pooled_cases']} cases; cost {k_fold['runs']} "
                     f"fine-tuning runs (one split: {k_fold['runs_with_one_split']})")
    notes += [f"negative transfer in {item['region']}: {item['scratch']} beat {item['best_transfer']} by "
              f"{100 * float(item['difference']):.1f} points" for item in report.get("negative_transfer", [])]
    if not report.get("negative_transfer") and report.get("scratch_candidates"):
        notes.append("no region where training from scratch beat transfer on validation")
    dead = report.get("leep_dead_classes", {}).get("classes", [])
    if dead:
        notes.append(f"LEEP warned that the source sees nothing of {', '.join(dead)}")
    figure.text(0.01, -0.02, "\n".join(_wrapped(note, 110) for note in notes), ha="left", va="top", fontsize=8)
    return _save(figure, out_png)


def _wrapped(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width, subsequent_indent="    "))


def leep_axis_limits(floors: Sequence[float], leeps: Sequence[float]) -> tuple[float, float]:
    """The LEEP axis of the ranking plot: the whole scale from the lowest floor or LEEP to 0 (a perfect source), with
    a margin; candidates that barely clear their floor look as close as they are instead of filling the frame."""
    low = min([*floors, *leeps])
    pad = 0.05 * (abs(low) or 1.0)
    return low - pad, pad


def plot_source_ranking(
    rows: Sequence[Mapping[str, Any]], class_names: Sequence[str], out_png: str | os.PathLike
) -> Path:
    """Two panels: pooled LEEP per candidate source (best first) with its prior floor, on the whole scale from the
    lowest floor to 0 (a perfect source), and per target class the mean transferability ``T_y`` of each candidate
    next to the floor ``P(y)``.

    Args:
        rows: ranked candidates, each ``{"name", "leep", "leep_floor", "classes": {class: {"transferability",
            "prior"}}}`` (see :func:`transrisk_components.bundle.stages.ranking.rank_sources`).
        class_names: target classes, index order.
        out_png: the PNG path (written atomically).
    """
    names = [str(r["name"]) for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(6 + 1.2 * len(class_names), 3.6 + 0.15 * len(rows)))
    positions = np.arange(len(rows))
    floors = [float(r["leep_floor"]) for r in rows]
    gains = [float(r["leep"]) - f for r, f in zip(rows, floors)]
    left.barh(positions, gains, left=floors, color="tab:blue", label="LEEP")  # a bar spans floor -> LEEP
    for position, floor in zip(positions, floors):
        left.plot([floor] * 2, [position - 0.4, position + 0.4], color="black", linestyle="--")
    left.set_xlim(*leep_axis_limits(floors, [float(r["leep"]) for r in rows]))
    left.axvline(0.0, color="grey", linewidth=0.8)
    left.set_yticks(positions, names)
    left.invert_yaxis()  # best on top
    left.set_xlabel("pooled LEEP (nats), bar from the prior floor; 0 = a perfect source")
    left.set_title("candidate sources")
    left.legend(handles=[Line2D([], [], color="tab:blue", lw=6, label="LEEP"),
                         Line2D([], [], color="black", linestyle="--", label="prior floor")], fontsize=8, loc="lower right")
    width = 0.8 / max(len(rows), 1)
    for offset, row in enumerate(rows):
        values = [_float_or_nan(row["classes"][c]["transferability"]) for c in class_names]
        right.bar(np.arange(len(class_names)) + (offset - (len(rows) - 1) / 2) * width, values, width, label=str(row["name"]))
    class_floors = [float(np.mean([r["classes"][c]["prior"] for r in rows])) for c in class_names]
    for index, floor in enumerate(class_floors):
        right.plot([index - 0.45, index + 0.45], [floor, floor], color="black", linestyle="--")
    right.set_xticks(np.arange(len(class_names)), [str(c) for c in class_names], rotation=20)
    right.set_ylim(0, 1)
    right.set_ylabel("mean transferability T_y")
    right.set_title("per target class (dashed: floor P(y))")
    right.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    return _save(figure, out_png)


def plot_ranking_study(
    table: Mapping[str, Mapping[str, Mapping[str, float]]],
    rankers: Sequence[tuple[str, str]],
    titles: Mapping[tuple[str, str], str],
    caption: str,
    out_png: str | os.PathLike,
) -> Path:
    """Each ranker's score of each candidate source against the test Dice of the model fine-tuned from it: one row
    of panels per ranker, one column per target scenario, ``caption`` (the goal) above them.

    Args:
        table: scenario -> candidate -> ``{<ranker key>, "test_dice", ...}`` (means over seeds).
        rankers: ``(key in table, axis label)`` per row.
        titles: ``(scenario, ranker key) -> panel title`` (e.g. its weighted tau); the scenario where absent.
        caption: the figure's title.
        out_png: the PNG path (written atomically).
    """
    scenarios = sorted(table)
    columns, lines = max(len(scenarios), 1), max(len(rankers), 1)
    figure, axes = plt.subplots(lines, columns, figsize=(4.5 * columns, 3.3 * lines), squeeze=False)
    for row, (key, label) in zip(axes, rankers):
        for axis, scenario in zip(row, scenarios):
            for name, values in sorted(table[scenario].items()):
                axis.scatter(values[key], values["test_dice"])
                axis.annotate(name, (values[key], values["test_dice"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            axis.set_title(titles.get((scenario, key), scenario), fontsize=8)
            axis.set_xlabel(f"{label} of the source")
            axis.set_ylabel("fine-tuned test Dice")
    figure.suptitle(caption, fontsize=10)
    figure.tight_layout()
    return _save(figure, out_png)


@dataclass(frozen=True)
class CriterionEntry:
    """One row of :func:`plot_criteria_forest`: a paired difference in one panel and whether it meets its criterion.

    Attributes:
        panel: the panel it is drawn in (e.g. the scenario).
        label: the row label (e.g. ``"- plain x3 (H2)"``); rows keep their first-seen order in every panel.
        statistics: the difference (Dice units) with its seed-bootstrap CI.
        met: whether it meets its criterion (drawn green) or not (red).
    """

    panel: str
    label: str
    statistics: PairedStatistics
    met: bool


def plot_criteria_forest(
    entries: Sequence[CriterionEntry], title: str, out_png: str | os.PathLike,
    reference_lines: Mapping[str, float] | None = None,
) -> Path:
    """Forest plot, one panel per ``entry.panel``: each difference (points) with its 95% seed-bootstrap CI, green
    where it meets its criterion and red where not; a solid line at 0 and a dashed line per ``reference_lines``
    (legend label -> points, e.g. ``{"H1 bound": -0.5}``)."""
    panels = list(dict.fromkeys(e.panel for e in entries))
    labels = list(dict.fromkeys(e.label for e in entries))
    figure, axes = plt.subplots(1, max(1, len(panels)), figsize=(max(7.5, 3.4 * len(panels)), 0.45 * len(labels) + 2.2),
                                sharey=True, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for entry in (e for e in entries if e.panel == panel):
            stat = entry.statistics
            error = ([[100 * (stat.mean - stat.seed_low)], [100 * (stat.seed_high - stat.mean)]]
                     if stat.n_seeds >= 2 else None)
            ax.errorbar(100 * stat.mean, labels.index(entry.label), xerr=error, fmt="o", capsize=3,
                        color="#1a9850" if entry.met else "#d73027")
        ax.axvline(0, color="black", linewidth=0.8)
        for value in (reference_lines or {}).values():
            ax.axvline(value, color="#4d4d4d", linewidth=0.8, linestyle="--")
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("Dice difference (points)")
    axes[0][0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes[0][0].invert_yaxis()
    handles = [Line2D([], [], color="#1a9850", marker="o", linestyle="", label="criterion met"),
               Line2D([], [], color="#d73027", marker="o", linestyle="", label="criterion not met")]
    handles += [Line2D([], [], color="#4d4d4d", linestyle="--", label=name) for name in (reference_lines or {})]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    return _save(figure, out_png)
