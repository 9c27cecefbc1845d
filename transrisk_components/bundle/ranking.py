"""Rank candidate source models for one target task before fine-tuning any of them: "which one, or none?".

Each candidate (a checkpoint, its network, its class count) runs once over the target training cases
(sliding-window inference on whole volumes, softmax, as the risk stage does); LEEP statistics are accumulated
inside each case's mask (``mask="nonzero"``: the head, the risk stage's rule). Per candidate:

- the pooled LEEP (mean ``log T(v)`` over every masked voxel of every case, ``P(y | z)`` pooled over them);
- the prior floor: the LEEP of a constant source that knows only the target class frequencies,
  ``sum_y P(y) log P(y)`` (:func:`~transrisk_components.method.transferability.prior_floor_leep`), and
  ``leep_gain_over_floor = leep - leep_floor`` (0: the candidate tells nothing about the target labels);
- per target class ``y``: the mean transferability ``T_y`` over its voxels and its floor ``P(y)``
  (``T_y >= P(y)``; equal when the candidate gives no information about ``y``), and the classes that are dead
  at ``dead_class_margin`` (:func:`~transrisk_components.method.transferability.dead_classes`).

Beside LEEP, a feature-based score: the Gaussian Bhattacharyya coefficient (GBC,
:mod:`transrisk_components.method.gbc`) of the target classes in the candidate's penultimate features (the input of
its last convolution, for MONAI's SegResNet the output layer's 1x1x1 convolution), over at most
``gbc_voxels_per_class`` masked voxels per target class and case, drawn at random with a fixed seed (the sub-sampling
keeps it cheap; ``nan`` for a network without a convolution, e.g. a TorchScript module).

Candidates are sorted best first by LEEP. Ties (LEEPs equal to 6 decimals, as the CSV writes them: e.g. two copies of one model) go to the
candidate with the higher mean information over the present foreground classes, then to the name in alphabetical
order, so the ranking never depends on the order the candidates were listed in. It does not depend on the order of
a candidate's output classes either: LEEP only sees ``P(y | z)`` through sums over ``z``.

Which image a candidate sees: by default the target modality, the image fine-tuning will feed the network
initialised from it (the risk stage's choice). A candidate entry may name another ``input_modality``: the same
target cases are then read with that modality's image.

Every candidate is checked (file present, a readable checkpoint, weights that fit its network and class count)
before any inference runs, and every problem is reported in one error naming the files; the CSV and the PNG are
written atomically at the end, so a failed ranking leaves no half-written output.

Memory: a candidate's softmax inside the masks is kept on the CPU (float32) between the statistics and the LEEP
instead of running the candidate a second time (``4 * Cs`` bytes per masked voxel: ~25 MB per FeTS case of
~1.5 M brain voxels for 4 classes), one candidate at a time -- fine for the few labelled target cases this is
meant for.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.inferers import Inferer
from torch import nn

from transrisk_components.method.gbc import gbc_score
from transrisk_components.method.masks import image_mask
from transrisk_components.method.transferability import (
    LEEPStatistics,
    class_table,
    dead_classes,
    pixel_transferability,
    prior_floor_leep,
)
from transrisk_components.reporting.figures import plot_source_ranking
from transrisk_components.utils.io import atomic_write_text, load_checkpoint

__all__ = ["CANDIDATE_KEYS", "SourceCandidate", "checkpoint_classes", "load_candidates", "rank_sources", "score_candidate"]

logger = logging.getLogger(__name__)

#: Keys a candidate entry may hold (``name`` and ``ckpt`` are required).
CANDIDATE_KEYS = ("name", "ckpt", "num_classes", "modality", "input_modality", "network", "network_def")

RANKING_CSV = "source_ranking.csv"
RANKING_PNG = "source_ranking.png"
_TIE_DECIMALS = 6


@dataclass
class SourceCandidate:
    """One candidate source model, checked and ready to run.

    Attributes:
        name: unique name (CSV row, figure label).
        ckpt: the checkpoint file.
        network: the network with the checkpoint's weights loaded (on the CPU).
        num_classes: ``Cs``, its output channels.
        modality: what it was trained on (informational), or ``None``.
        input_modality: the target cases' image it is run on; ``None`` for the target modality.
    """

    name: str
    ckpt: Path
    network: nn.Module
    num_classes: int
    modality: str | None = None
    input_modality: str | None = None


def _state_dict(loaded: Any) -> dict[str, torch.Tensor] | None:
    """The weights of a loaded checkpoint: a state_dict, or a dict holding one under ``"model"``."""
    if isinstance(loaded, Mapping) and "model" in loaded and isinstance(loaded["model"], Mapping):
        loaded = loaded["model"]
    if isinstance(loaded, Mapping) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return dict(loaded)
    return None


def checkpoint_classes(state: Mapping[str, torch.Tensor]) -> int | None:
    """The output classes of a segmentation state_dict: the length of its last 1-D ``*.bias`` (the output layer's
    bias in MONAI's networks); ``None`` when it has none."""
    biases = [v for k, v in state.items() if k.endswith("bias") and v.ndim == 1]
    return int(biases[-1].shape[0]) if biases else None


def _build_network(
    entry: Mapping[str, Any], num_classes: int, network_factory: Callable[..., nn.Module] | None
) -> nn.Module:
    """The candidate's network: its own MONAI config (``network_def``) or the default factory with ``network``
    overrides, with ``out_channels = num_classes``."""
    if entry.get("network_def") is not None:
        config = dict(entry["network_def"])
        config.setdefault("out_channels", num_classes)
        parser = ConfigParser({"imports": ["$import torch", "$import monai"], "network_def": config})
        return parser.get_parsed_content("network_def")
    if network_factory is None:
        raise ValueError("no network: give the candidate a 'network_def' (a MONAI network config)")
    overrides = dict(entry.get("network") or {})
    overrides["out_channels"] = num_classes
    return network_factory(**overrides)


def _check_entry(entry: Any, index: int, where: str) -> list[str]:
    if not isinstance(entry, Mapping):
        return [f"{where}: candidate {index + 1} is not an object with 'name' and 'ckpt' but {type(entry).__name__}"]
    problems = []
    for key in ("name", "ckpt"):
        if not entry.get(key):
            problems.append(f"{where}: candidate {index + 1} has no {key!r}")
    unknown = sorted(set(entry) - set(CANDIDATE_KEYS))
    if unknown:
        problems.append(f"{where}: candidate {entry.get('name', index + 1)!r} has unknown keys {unknown}; known: {list(CANDIDATE_KEYS)}")
    return problems


def _read_candidates_file(path: Path) -> list[Any]:
    if not path.is_file():
        raise FileNotFoundError(f"candidates file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"candidates file {path} is not JSON: {err}") from err
    if isinstance(data, Mapping) and "candidates" in data:
        data = data["candidates"]
    if not isinstance(data, list) or not data:
        raise ValueError(f"candidates file {path} must hold a non-empty list of candidates (or {{'candidates': [...]}})")
    return data


def load_candidates(
    candidates: Sequence[Mapping[str, Any]] | None = None,
    candidates_file: str | Path | None = None,
    default: Mapping[str, Any] | None = None,
    network_factory: Callable[..., nn.Module] | None = None,
) -> list[SourceCandidate]:
    """Check every candidate and load its weights; one error lists every problem, before any inference.

    Args:
        candidates: candidate entries ``{"name", "ckpt", ...}`` (see :data:`CANDIDATE_KEYS`): ``num_classes``
            (default: read from the checkpoint's output layer), ``modality`` (what it was trained on, reported),
            ``input_modality`` (the image it sees; default the target modality), ``network`` (keyword overrides of
            the default network, e.g. ``{"init_filters": 16}``) or ``network_def`` (a whole MONAI network config,
            e.g. ``{"_target_": "UNet", ...}``).
        candidates_file: a JSON file with such a list (or ``{"candidates": [...]}``); relative ``ckpt`` paths are
            read from the file's folder. Used when ``candidates`` is ``None``.
        default: the one candidate used when neither is given (the bundle's own source model).
        network_factory: ``factory(out_channels=Cs, **overrides) -> nn.Module``, the default network.

    Raises:
        FileNotFoundError: the candidates file or every problem's checkpoint is missing.
        ValueError: anything else wrong (duplicate names, unreadable checkpoint, weights that do not fit the
            network or the class count), every problem in one message naming the files.
    """
    base, where = Path.cwd(), "candidates"
    if candidates is None and candidates_file is not None:
        path = Path(candidates_file).expanduser()
        candidates, base, where = _read_candidates_file(path), path.resolve().parent, str(path)
    if candidates is None:
        if default is None:
            raise ValueError("no candidates: pass candidates or candidates_file")
        candidates = [default]
        hint = " (the bundle's own source model: run 'pretrain' or 'training' first, or pass --candidates_file)"
    else:
        hint = ""
    problems: list[str] = []
    for index, entry in enumerate(candidates):
        problems += _check_entry(entry, index, where)
    names = [str(e.get("name")) for e in candidates if isinstance(e, Mapping)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"{where}: candidate names must be unique, repeated: {duplicates}")
    if problems:
        raise ValueError("bad candidate list:\n  " + "\n  ".join(problems))
    loaded: list[SourceCandidate] = []
    for entry in candidates:
        name = str(entry["name"])
        ckpt = Path(str(entry["ckpt"])).expanduser()
        ckpt = ckpt if ckpt.is_absolute() else base / ckpt
        if not ckpt.is_file():
            problems.append(f"candidate {name!r}: checkpoint {ckpt} does not exist{hint}")
            continue
        try:
            state = _state_dict(load_checkpoint(ckpt, "replace it or drop the candidate", map_location="cpu", weights_only=True))
        except ValueError as err:
            problems.append(f"candidate {name!r}: {err}")
            continue
        if state is None:
            problems.append(f"candidate {name!r}: checkpoint {ckpt} holds no state_dict (tensors by parameter name)")
            continue
        found = checkpoint_classes(state)
        wanted = entry.get("num_classes")
        if wanted is not None and found is not None and int(wanted) != found:
            problems.append(
                f"candidate {name!r}: checkpoint {ckpt} has {found} output classes (output layer), "
                f"the candidate entry says num_classes {int(wanted)}"
            )
            continue
        num = int(wanted) if wanted is not None else found
        if num is None:
            problems.append(f"candidate {name!r}: cannot read the class count of {ckpt}: give 'num_classes'")
            continue
        try:
            network = _build_network(entry, num, network_factory)
        except Exception as err:  # a bad network config: name the candidate
            cause = err.__cause__ or err
            problems.append(f"candidate {name!r}: its network cannot be built ({type(cause).__name__}: {cause})")
            continue
        try:
            network.load_state_dict(state)
        except RuntimeError as err:
            summary = str(err).split("\n\t", 1)[-1].replace("\n\t", "; ")[:600]
            problems.append(
                f"candidate {name!r}: checkpoint {ckpt} does not fit its network {type(network).__name__} with "
                f"out_channels={num} (expected {sum(p.numel() for p in network.state_dict().values())} values in "
                f"{len(network.state_dict())} tensors): {summary}"
            )
            continue
        loaded.append(
            SourceCandidate(name, ckpt, network.eval(), num, entry.get("modality"), entry.get("input_modality"))
        )
    if problems:
        error = FileNotFoundError if all("does not exist" in p for p in problems) else ValueError
        raise error(f"{len(problems)} of {len(candidates)} candidate source model(s) cannot be used:\n  " + "\n  ".join(problems))
    return loaded


class _WithFeatures(nn.Module):
    """``network`` with its penultimate features appended: ``x [B, C, *S] -> [B, Cs + D, *S]``, the logits then the
    ``D`` input channels of its last convolution ``last_conv`` (which must keep the spatial size, as a 1x1x1 output
    layer does). :meth:`remove` takes the hook off ``last_conv`` again."""

    def __init__(self, network: nn.Module, last_conv: nn.Module) -> None:
        super().__init__()
        self.network = network
        self._features: list[torch.Tensor] = []
        self._hook = last_conv.register_forward_hook(lambda module, inputs, output: self._features.append(inputs[0]))

    def remove(self) -> None:
        """Detach from the wrapped network (its later calls keep no features)."""
        self._hook.remove()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._features.clear()
        logits = self.network(x)
        features = self._features[-1]
        self._features.clear()
        if features.shape[2:] != logits.shape[2:]:
            raise ValueError(f"the last convolution of {type(self.network).__name__} changes the spatial size "
                             f"({tuple(features.shape[2:])} -> {tuple(logits.shape[2:])}): GBC needs a 1x1x1 output layer")
        return torch.cat([logits, features.to(logits.dtype)], dim=1)


def _last_conv(network: nn.Module) -> nn.Module | None:
    """The last ``nn.Conv1d/2d/3d`` registered in ``network`` (MONAI's SegResNet: the output layer), or ``None``."""
    convs = [m for m in network.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    return convs[-1] if convs else None


def _sample_per_class(labels: torch.Tensor, per_class: int, generator: torch.Generator) -> torch.Tensor:
    """Indices ``[m]`` into ``labels [n]``: at most ``per_class`` of each class, drawn without replacement."""
    picked = []
    for c in torch.unique(labels):
        where = torch.nonzero(labels == c).flatten()
        if where.numel() > per_class:
            where = where[torch.randperm(where.numel(), generator=generator)[:per_class]]
        picked.append(where)
    return torch.cat(picked) if picked else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def score_candidate(
    network: nn.Module,
    num_classes: int,
    datalist: Sequence[Mapping[str, Any]],
    preprocessing: Callable[[dict], dict],
    inferer: Inferer,
    class_names: Sequence[str],
    mask: str = "nonzero",
    device: str | torch.device = "cpu",
    amp: bool = False,
    dead_class_margin: float = 0.05,
    gbc_voxels_per_class: int = 1000,
) -> dict[str, Any]:
    """LEEP, prior floor, per-class transferability and GBC of one source network over the target cases.

    Args:
        network: the source network (``num_classes`` logits per voxel).
        num_classes: ``Cs``.
        datalist: target cases ``{"case_id", "image", "label"}``.
        preprocessing: whole-volume loading (the bundle's ``validate#preprocessing``): ``image [C, *S]``,
            ``label [1, *S]`` target classes.
        inferer: whole-volume inferer (sliding window).
        class_names: target class names, index order (``Ct`` of them).
        mask: ``"nonzero"`` (the head) or ``"all"``, as the risk stage's ``mask``.
        device: where the network runs.
        amp: autocast on CUDA.
        dead_class_margin: see :func:`~transrisk_components.method.transferability.dead_classes`.
        gbc_voxels_per_class: masked voxels per target class and case whose features enter the GBC (random,
            seeded by the case's position in ``datalist``).

    Returns:
        ``{"leep", "leep_floor", "leep_gain_over_floor", "gbc", "num_voxels", "classes": class_table(...),
        "dead_classes": [names]}``; ``gbc`` is ``nan`` when the network has no convolution.
    """
    device = torch.device(device)
    network = network.to(device).eval()
    last_conv = _last_conv(network)
    runner = _WithFeatures(network, last_conv) if last_conv is not None else network
    stats = LEEPStatistics(len(class_names), num_classes)
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []  # per case: masked probs [n, Cs] float32, labels [n] uint8
    sampled: list[tuple[torch.Tensor, torch.Tensor]] = []  # per case: features [m, D] float32, labels [m]
    try:
        for index, case in enumerate(datalist):
            item = preprocessing(dict(case))
            image = item["image"].as_tensor().unsqueeze(0).to(device)  # [1, C, *S]
            label = item["label"].as_tensor().unsqueeze(0).to(device, torch.uint8)  # [1, 1, *S]
            inside = image_mask(image, mask, case.get("case_id", "?"), case.get("image"))
            with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                output = inferer(image, runner)  # [1, Cs (+ D), *S]
            probs = torch.softmax(output[:, :num_classes].float(), dim=1)
            stats.update(probs, label, inside)
            keep = inside[0, 0]
            labels = label[0, 0][keep].to("cpu")
            kept.append((probs[0][:, keep].T.to("cpu"), labels))
            if last_conv is not None:
                features = output[0, num_classes:][:, keep].T.float().to("cpu")  # [n, D]
                rows = _sample_per_class(labels, gbc_voxels_per_class, torch.Generator().manual_seed(index))
                sampled.append((features[rows], labels[rows]))
            del image, label, output, probs, inside
    finally:
        if isinstance(runner, _WithFeatures):
            runner.remove()
    conditional = stats.conditional()
    log_t_sum = 0.0
    for probs, labels in kept:  # [n, Cs], [n]
        t = pixel_transferability(probs.T.unsqueeze(0), labels.view(1, 1, -1), conditional)  # [1, 1, n]
        log_t_sum += float(torch.log(t.double().clamp_min(1e-12)).sum())
    leep_value = log_t_sum / max(stats.num_voxels, 1)
    floor = prior_floor_leep(stats.class_prior())
    table = class_table(stats, class_names)
    dead = [str(class_names[i]) for i in dead_classes(stats.class_transferability(), stats.class_prior(), dead_class_margin)]
    gbc = (gbc_score(torch.cat([f for f, _ in sampled]), torch.cat([y for _, y in sampled]).long(), len(class_names))
           if sampled else math.nan)
    return {
        "leep": leep_value,
        "leep_floor": floor,
        "leep_gain_over_floor": leep_value - floor,
        "gbc": gbc,
        "num_voxels": stats.num_voxels,
        "classes": table,
        "dead_classes": dead,
    }


def _foreground_information(result: Mapping[str, Any]) -> float:
    values = [v["information"] for v in result["classes"].values() if v["index"] > 0 and v["information"] is not None]
    return sum(values) / len(values) if values else 0.0


def _number(value: float) -> str:
    """6 decimals, without a "-0.000000" for a tiny negative rounding error."""
    return f"{round(value, 6) + 0.0:.6f}"


def _csv_text(rows: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> str:
    columns = ["rank", "name", "ckpt", "modality", "input_modality", "num_source_classes", "leep", "leep_floor",
               "leep_gain_over_floor", "gbc", "num_voxels"]
    columns += [f"T_{c}" for c in class_names] + [f"floor_{c}" for c in class_names] + ["dead_classes"]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(columns)
    for row in rows:
        values = [row["rank"], row["name"], row["ckpt"], row["modality"] or "", row["input_modality"],
                  row["num_source_classes"], _number(row["leep"]), _number(row["leep_floor"]),
                  _number(row["leep_gain_over_floor"]), "nan" if not math.isfinite(row["gbc"]) else _number(row["gbc"]),
                  row["num_voxels"]]
        table = row["classes"]
        values += ["nan" if table[c]["transferability"] is None else _number(table[c]["transferability"]) for c in class_names]
        values += [_number(table[c]["prior"]) for c in class_names]
        values.append("|".join(row["dead_classes"]))
        writer.writerow(values)
    return text.getvalue()


def rank_sources(
    candidates: Sequence[Mapping[str, Any]] | None,
    datalist: Sequence[Mapping[str, Any]],
    preprocessing: Callable[[dict], dict],
    inferer: Inferer,
    class_names: Sequence[str],
    output_dir: str | Path | None = None,
    candidates_file: str | Path | None = None,
    default: Mapping[str, Any] | None = None,
    network_factory: Callable[..., nn.Module] | None = None,
    target_modality: str | None = None,
    datalist_for_modality: Callable[[str], Sequence[Mapping[str, Any]]] | None = None,
    mask: str = "nonzero",
    device: str | torch.device = "cpu",
    amp: bool = False,
    dead_class_margin: float = 0.05,
    gbc_voxels_per_class: int = 1000,
) -> list[dict[str, Any]]:
    """Rank candidate source models by pooled LEEP over the target training cases, best first.

    Args:
        candidates, candidates_file, default, network_factory: the candidates, see :func:`load_candidates`.
        datalist: the target training cases (target modality).
        preprocessing: whole-volume loading (``validate#preprocessing``).
        inferer: whole-volume inferer (``validate#inferer``).
        class_names: the target task's class names, index order.
        output_dir: where ``source_ranking.csv`` and ``source_ranking.png`` go; ``None`` writes nothing.
        target_modality: the modality of ``datalist`` (reported; a candidate whose ``input_modality`` is
            another one gets ``datalist_for_modality(input_modality)``).
        datalist_for_modality: the same cases with another modality's image.
        mask, device, amp, dead_class_margin, gbc_voxels_per_class: see :func:`score_candidate`.

    Returns:
        One row per candidate, best first: ``{"rank", "name", "ckpt", "modality", "input_modality",
        "num_source_classes", "leep", "leep_floor", "leep_gain_over_floor", "gbc", "num_voxels", "classes",
        "dead_classes"}``.
    """
    loaded = load_candidates(candidates, candidates_file, default, network_factory)
    needed = {c.input_modality for c in loaded if c.input_modality not in (None, target_modality)}
    if needed and datalist_for_modality is None:
        raise ValueError(f"candidates want input modalities {sorted(needed)} but no datalist_for_modality was given")
    datalists = {m: list(datalist_for_modality(m)) for m in sorted(needed)}  # fails before any inference
    rows = []
    for number, candidate in enumerate(loaded, start=1):
        cases = datalists.get(candidate.input_modality, datalist)
        seen = candidate.input_modality or target_modality or "target"
        logger.info(
            "candidate %d/%d: %s (%s, %d classes) over %d target case(s), %s images",
            number, len(loaded), candidate.name, candidate.ckpt, candidate.num_classes, len(cases), seen,
        )
        result = score_candidate(
            candidate.network, candidate.num_classes, cases, preprocessing, inferer, class_names, mask, device, amp,
            dead_class_margin, gbc_voxels_per_class,
        )
        candidate.network.to("cpu")
        logger.info(
            "candidate %d/%d: %s LEEP %.4f (prior floor %.4f, gain %.4f), GBC %.4f%s",
            number, len(loaded), candidate.name, result["leep"], result["leep_floor"], result["leep_gain_over_floor"],
            result["gbc"],
            f"; no information about {', '.join(result['dead_classes'])}" if result["dead_classes"] else "",
        )
        rows.append({
            "name": candidate.name,
            "ckpt": str(candidate.ckpt),
            "modality": candidate.modality,
            "input_modality": seen,
            "num_source_classes": candidate.num_classes,
            **result,
        })
    rows.sort(key=lambda r: (-round(r["leep"], _TIE_DECIMALS), -_foreground_information(r), r["name"]))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    if output_dir is not None:
        out = Path(output_dir)
        plot_source_ranking(rows, list(class_names), out / RANKING_PNG)
        csv_path = atomic_write_text(out / RANKING_CSV, _csv_text(rows, list(class_names)))
        logger.info(
            "source ranking written to %s (best: %s, LEEP %.4f; prior floor %.4f)",
            csv_path, rows[0]["name"], rows[0]["leep"], rows[0]["leep_floor"],
        )
    if all(not math.isfinite(r["leep"]) or r["leep_gain_over_floor"] <= 1e-9 for r in rows):
        logger.warning("no candidate scores above the prior floor: none of them knows anything about the target labels")
    return rows
