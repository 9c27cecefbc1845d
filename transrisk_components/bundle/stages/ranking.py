"""Rank candidate source models for one target task before fine-tuning any of them: "which one, or none?".

Each candidate (a checkpoint, its network, its class count) runs once over the target training cases
(sliding-window inference on whole volumes, softmax or sigmoid states, as the risk stage does); LEEP statistics are accumulated
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
keeps it cheap; ``nan`` for a network without a reachable convolution, see below).

Candidates are sorted best first by LEEP. Ties (LEEPs equal to 6 decimals, as the CSV writes them: e.g. two copies of one model) go to the
candidate with the higher mean information over the present foreground classes, then to the name in alphabetical
order, so the ranking never depends on the order the candidates were listed in. It does not depend on the order of
a candidate's output classes either: LEEP only sees ``P(y | z)`` through sums over ``z``.

Which image a candidate sees: by default the target modality, the image fine-tuning will feed the network
initialised from it (the risk stage's choice). A candidate entry may name another ``input_modality``: the same
target cases are then read with that modality's image, or, for a list in channel order or ``"all"``, with those
modalities' images stacked as channels (as the bundles' loaders stack a multi-modal input; the mask is then where any
channel is nonzero). Its network's input channels (its first convolution) must be one per such image.

What a candidate can be -- everything the risk stage's source can be (:mod:`~transrisk_components.bundle.engine.source_model`,
:mod:`~transrisk_components.method.source_outputs`): a ``state_dict`` (or a dict holding one under ``key_in_ckpt``;
DDP ``module.`` prefixes dropped) of the bundle's network (``network`` overrides) or of any MONAI network
(``network_def``), or a TorchScript file (``torchscript``, detected from the file; its own network); softmax outputs or
``k`` sigmoid regions (``output: "sigmoid"``), whose ``2^k`` on/off combinations are the source states of LEEP, as in
the risk stage. GBC needs the input of the last convolution at every output voxel: ``nan`` for a TorchScript module
(no forward hook reaches it) or a network whose last convolution is not on the output grid (a UNet ending in a
transposed convolution), with the reason in the log and the CSV's ``gbc_note``. A ranking with such candidates (or
sigmoid, multi-channel ones) gets the columns :data:`EXTRA_COLUMNS` at the end of its CSV; a ranking of plain
softmax single-input candidates keeps the CSV as before.

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

from transrisk_components.bundle.io.config_values import as_bool
from transrisk_components.bundle.engine.source_model import is_torchscript, read_source_state
from transrisk_components.data.registry import ALL_MODALITIES, modality_channels
from transrisk_components.method.gbc import gbc_score
from transrisk_components.method.masks import image_mask
from transrisk_components.method.source_outputs import SOURCE_OUTPUTS, num_source_states, source_states
from transrisk_components.method.transferability import (
    LEEPStatistics,
    class_table,
    dead_classes,
    pixel_transferability,
    prior_floor_leep,
)
from transrisk_components.reporting.figures import plot_source_ranking
from transrisk_components.utils.io import atomic_write_text

__all__ = [
    "CANDIDATE_KEYS", "EXTRA_COLUMNS", "SourceCandidate", "checkpoint_classes", "checkpoint_in_channels", "load_candidates",
    "rank_sources", "score_candidate",
]

logger = logging.getLogger(__name__)

#: Keys a candidate entry may hold (``name`` and ``ckpt`` are required).
CANDIDATE_KEYS = (
    "name", "ckpt", "num_classes", "modality", "input_modality", "network", "network_def", "torchscript", "key_in_ckpt",
    "output",
)

RANKING_CSV = "source_ranking.csv"
RANKING_PNG = "source_ranking.png"
_TIE_DECIMALS = 6


@dataclass
class SourceCandidate:
    """One candidate source model, checked and ready to run.

    Attributes:
        name: unique name (CSV row, figure label).
        ckpt: the checkpoint file.
        network: the network with the checkpoint's weights loaded (on the CPU), or the TorchScript module.
        num_classes: ``Cs``, its source states ``z`` (LEEP's): its output channels for a softmax output, ``2^k`` for
            ``k`` sigmoid regions.
        modality: what it was trained on (informational), or ``None``.
        input_modality: the target cases' image(s) it is run on (a name, a list in channel order, or ``"all"``);
            ``None`` for the target modality.
        output: ``"softmax"`` or ``"sigmoid"`` (:mod:`~transrisk_components.method.source_outputs`).
        num_outputs: the network's output channels (``k`` for a sigmoid output); ``None``: ``num_classes``.
        input_channels: the modalities of its input channels, in order (``None``: not resolved, no dataset given).
        torchscript: whether ``network`` is a TorchScript module.
    """

    name: str
    ckpt: Path
    network: nn.Module
    num_classes: int
    modality: str | Sequence[str] | None = None
    input_modality: str | Sequence[str] | None = None
    output: str = "softmax"
    num_outputs: int | None = None
    input_channels: tuple[str, ...] | None = None
    torchscript: bool = False


def checkpoint_classes(state: Mapping[str, torch.Tensor]) -> int | None:
    """The output classes of a segmentation state_dict: the length of its last 1-D ``*.bias`` (the output layer's
    bias in MONAI's networks); ``None`` when it has none."""
    biases = [v for k, v in state.items() if k.endswith("bias") and v.ndim == 1]
    return int(biases[-1].shape[0]) if biases else None


def checkpoint_in_channels(state: Mapping[str, torch.Tensor]) -> int | None:
    """The input channels of a segmentation state_dict: dimension 1 of its first convolution weight (the first
    ``*weight`` of 3 or more dimensions, MONAI's networks' input layer); ``None`` when it has none."""
    weights = [v for k, v in state.items() if k.endswith("weight") and v.ndim >= 3]
    return int(weights[0].shape[1]) if weights else None


def _build_network(
    entry: Mapping[str, Any],
    num_classes: int,
    network_factory: Callable[..., nn.Module] | None,
    in_channels: int | None = None,
) -> nn.Module:
    """The candidate's network: its own MONAI config (``network_def``) or the default factory with ``network``
    overrides, with ``out_channels = num_classes`` and, unless the entry says otherwise, ``in_channels`` one per
    input modality."""
    if entry.get("network_def") is not None:
        config = dict(entry["network_def"])
        config.setdefault("out_channels", num_classes)
        if in_channels is not None:
            config.setdefault("in_channels", in_channels)
        parser = ConfigParser({"imports": ["$import torch", "$import monai"], "network_def": config})
        return parser.get_parsed_content("network_def")
    if network_factory is None:
        raise ValueError("no network: give the candidate a 'network_def' (a MONAI network config)")
    overrides = dict(entry.get("network") or {})
    overrides["out_channels"] = num_classes
    if in_channels is not None:
        overrides.setdefault("in_channels", in_channels)
    return network_factory(**overrides)


def _modality_text(modality: str | Sequence[str] | None) -> str:
    """A modality setting as one CSV/log field: a name as it is, a list joined by ``|``."""
    if modality is None:
        return ""
    return modality if isinstance(modality, str) else "|".join(map(str, modality))


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


def _load_candidate(
    entry: Mapping[str, Any],
    base: Path,
    hint: str,
    network_factory: Callable[..., nn.Module] | None,
    channels_of: Callable[[Any], tuple[str, ...] | None] | None,
    problems: list[str],
) -> SourceCandidate | None:
    """One checked candidate, or ``None`` with its problem appended to ``problems``."""
    name = str(entry["name"])
    ckpt = Path(str(entry["ckpt"])).expanduser()
    ckpt = ckpt if ckpt.is_absolute() else base / ckpt
    if not ckpt.is_file():
        problems.append(f"candidate {name!r}: checkpoint {ckpt} does not exist{hint}")
        return None
    output = entry.get("output") or "softmax"
    if output not in SOURCE_OUTPUTS:
        problems.append(f"candidate {name!r}: unknown output {output!r}; choose one of {list(SOURCE_OUTPUTS)}")
        return None
    try:
        scripted = is_torchscript(ckpt)
        wanted_script = scripted if entry.get("torchscript") is None else as_bool(entry["torchscript"], "torchscript")
    except ValueError as err:
        problems.append(f"candidate {name!r}: {err}")
        return None
    if wanted_script and not scripted:
        problems.append(f"candidate {name!r}: torchscript is true but {ckpt} is not a TorchScript archive (torch.jit.save)")
        return None
    try:
        state = read_source_state(ckpt, entry.get("key_in_ckpt"))
    except ValueError as err:
        problems.append(f"candidate {name!r}: {err}")
        return None
    found = checkpoint_classes(state)
    wanted = entry.get("num_classes")
    if wanted is not None and found is not None and int(wanted) != found:
        problems.append(
            f"candidate {name!r}: checkpoint {ckpt} has {found} output classes (output layer), "
            f"the candidate entry says num_classes {int(wanted)}"
        )
        return None
    num = int(wanted) if wanted is not None else found
    if num is None:
        problems.append(f"candidate {name!r}: cannot read the class count of {ckpt}: give 'num_classes'")
        return None
    try:
        states = num_source_states(num, output)
    except ValueError as err:
        problems.append(f"candidate {name!r}: {err}")
        return None
    channels = None
    if channels_of is not None:
        try:
            channels = channels_of(entry.get("input_modality"))
        except ValueError as err:
            problems.append(f"candidate {name!r}: {err}")
            return None
    reads = checkpoint_in_channels(state)
    if channels is not None and reads is not None and reads != len(channels):
        problems.append(
            f"candidate {name!r}: its network takes in_channels={reads} (first convolution of {ckpt}), but its input "
            f"is {len(channels)} image(s) {list(channels)} (input_modality {entry.get('input_modality')!r}, default the "
            f"target modality): give input_modality the {reads} modalities it reads, in its channel order (a list, or "
            f"{ALL_MODALITIES!r})"
        )
        return None
    if wanted_script:
        try:
            network = torch.jit.load(str(ckpt), map_location="cpu")
        except Exception as err:  # noqa: BLE001 -- torch raises several types for a damaged archive
            problems.append(f"candidate {name!r}: TorchScript file {ckpt} cannot be loaded ({type(err).__name__}: {err})")
            return None
        return SourceCandidate(name, ckpt, network.eval(), states, entry.get("modality"), entry.get("input_modality"),
                               output, num, channels, torchscript=True)
    try:
        network = _build_network(entry, num, network_factory, None if channels is None else len(channels))
    except Exception as err:  # a bad network config: name the candidate
        cause = err.__cause__ or err
        problems.append(f"candidate {name!r}: its network cannot be built ({type(cause).__name__}: {cause})")
        return None
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        summary = str(err).split("\n\t", 1)[-1].replace("\n\t", "; ")[:600]
        problems.append(
            f"candidate {name!r}: checkpoint {ckpt} does not fit its network {type(network).__name__} with "
            f"out_channels={num} (expected {sum(p.numel() for p in network.state_dict().values())} values in "
            f"{len(network.state_dict())} tensors): {summary}"
        )
        return None
    return SourceCandidate(name, ckpt, network.eval(), states, entry.get("modality"), entry.get("input_modality"),
                           output, num, channels)


def load_candidates(
    candidates: Sequence[Mapping[str, Any]] | None = None,
    candidates_file: str | Path | None = None,
    default: Mapping[str, Any] | None = None,
    network_factory: Callable[..., nn.Module] | None = None,
    channels_of: Callable[[Any], tuple[str, ...] | None] | None = None,
) -> list[SourceCandidate]:
    """Check every candidate and load its weights; one error lists every problem, before any inference.

    Args:
        candidates: candidate entries ``{"name", "ckpt", ...}`` (see :data:`CANDIDATE_KEYS`): ``num_classes``
            (the network's output channels, for a sigmoid output its ``k`` regions; default: read from the
            checkpoint's output layer), ``modality`` (what it was trained on, reported), ``input_modality`` (the
            image(s) it sees: a name, a list in channel order, or ``"all"``; default the target modality),
            ``network`` (keyword overrides of the default network, e.g. ``{"init_filters": 16}``) or ``network_def``
            (a whole MONAI network config, e.g. ``{"_target_": "UNet", ...}``; ``in_channels`` defaults to one per
            input modality), ``torchscript`` (the checkpoint is a TorchScript file, its own network; default: detected
            from the file), ``key_in_ckpt`` (the checkpoint dict's entry holding the state_dict; default: the file
            is one, or holds one under ``"model"``; a DDP ``module.`` prefix is dropped) and ``output``
            (``"softmax"``, default, or ``"sigmoid"``: ``k`` independent regions whose ``2^k`` on/off combinations
            are the source states, as in the risk stage).
        candidates_file: a JSON file with such a list (or ``{"candidates": [...]}``); relative ``ckpt`` paths are
            read from the file's folder. Used when ``candidates`` is ``None``.
        default: the one candidate used when neither is given (the bundle's own source model).
        network_factory: ``factory(out_channels=Cs, **overrides) -> nn.Module``, the default network.
        channels_of: ``input_modality -> modality names``, one per input channel (``None`` -> the target's); when
            given, a candidate whose network's input channels (its first convolution) are not one per such image is
            refused. ``None``: no such check.

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
        candidate = _load_candidate(entry, base, hint, network_factory, channels_of, problems)
        if candidate is not None:
            loaded.append(candidate)
    if problems:
        error = FileNotFoundError if all("does not exist" in p for p in problems) else ValueError
        raise error(f"{len(problems)} of {len(candidates)} candidate source model(s) cannot be used:\n  " + "\n  ".join(problems))
    return loaded


class _FeatureSizeError(ValueError):
    """The last convolution's input is not on the output's grid: no per-voxel features for GBC."""


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
            raise _FeatureSizeError(
                f"the last convolution of {type(self.network).__name__} is not on the output grid "
                f"({tuple(features.shape[2:])} vs {tuple(logits.shape[2:])}): GBC needs a 1x1x1 output layer"
            )
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
    output: str = "softmax",
) -> dict[str, Any]:
    """LEEP, prior floor, per-class transferability and GBC of one source network over the target cases.

    Args:
        network: the source network (``num_classes`` logits per voxel).
        num_classes: its output channels: ``Cs`` classes for a softmax output, ``k`` regions for a sigmoid one.
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
        output: ``"softmax"`` or ``"sigmoid"``: how the channels become the source states ``z``
            (:func:`~transrisk_components.method.source_outputs.source_states`; ``2^k`` states for ``k`` regions).

    Returns:
        ``{"leep", "leep_floor", "leep_gain_over_floor", "gbc", "gbc_note", "num_voxels", "classes":
        class_table(...), "dead_classes": [names]}``; ``gbc`` is ``nan`` when the network has no convolution a
        forward hook can reach (a TorchScript module), ``gbc_note`` then says why (``""`` otherwise).
    """
    device = torch.device(device)
    network = network.to(device).eval()
    if isinstance(network, torch.jit.ScriptModule):
        last_conv, gbc_note = None, "TorchScript module: no forward hook reaches its last convolution's input"
    else:
        last_conv = _last_conv(network)
        gbc_note = "" if last_conv is not None else "no convolution layer in the network"
    runner = _WithFeatures(network, last_conv) if last_conv is not None else network
    stats = LEEPStatistics(len(class_names), num_source_states(num_classes, output))
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []  # per case: masked probs [n, Cs] float32, labels [n] uint8
    sampled: list[tuple[torch.Tensor, torch.Tensor]] = []  # per case: features [m, D] float32, labels [m]
    try:
        for index, case in enumerate(datalist):
            item = preprocessing(dict(case))
            image = item["image"].as_tensor().unsqueeze(0).to(device)  # [1, C, *S]
            label = item["label"].as_tensor().unsqueeze(0).to(device, torch.uint8)  # [1, 1, *S]
            inside = image_mask(image, mask, case.get("case_id", "?"), case.get("image"))
            with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                try:
                    logits = inferer(image, runner)  # [1, Cs (+ D), *S]
                except _FeatureSizeError as err:  # e.g. a UNet ending in a transposed convolution: LEEP only
                    runner.remove()
                    runner, last_conv, gbc_note = network, None, str(err)
                    sampled.clear()
                    logits = inferer(image, runner)
            probs = source_states(logits[:, :num_classes], output)  # [1, Z, *S] float32
            stats.update(probs, label, inside)
            keep = inside[0, 0]
            labels = label[0, 0][keep].to("cpu")
            kept.append((probs[0][:, keep].T.to("cpu"), labels))
            if last_conv is not None:
                features = logits[0, num_classes:][:, keep].T.float().to("cpu")  # [n, D]
                rows = _sample_per_class(labels, gbc_voxels_per_class, torch.Generator().manual_seed(index))
                sampled.append((features[rows], labels[rows]))
            del image, label, logits, probs, inside
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
        "gbc_note": gbc_note,
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


#: Columns appended to the CSV when a candidate is not a softmax, single-input, hookable network (the columns of
#: plain candidates' rankings stay as they were).
EXTRA_COLUMNS = ("source_output", "num_source_outputs", "input_channels", "torchscript", "gbc_note")


def _plain(row: Mapping[str, Any]) -> bool:
    return (row.get("source_output", "softmax") == "softmax" and len(row.get("input_channels") or ()) <= 1
            and not row.get("torchscript") and not row.get("gbc_note"))


def _csv_text(rows: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> str:
    columns = ["rank", "name", "ckpt", "modality", "input_modality", "num_source_classes", "leep", "leep_floor",
               "leep_gain_over_floor", "gbc", "num_voxels"]
    columns += [f"T_{c}" for c in class_names] + [f"floor_{c}" for c in class_names] + ["dead_classes"]
    extra = not all(_plain(r) for r in rows)
    if extra:
        columns += list(EXTRA_COLUMNS)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(columns)
    for row in rows:
        values = [row["rank"], row["name"], row["ckpt"], _modality_text(row["modality"]), row["input_modality"],
                  row["num_source_classes"], _number(row["leep"]), _number(row["leep_floor"]),
                  _number(row["leep_gain_over_floor"]), "nan" if not math.isfinite(row["gbc"]) else _number(row["gbc"]),
                  row["num_voxels"]]
        table = row["classes"]
        values += ["nan" if table[c]["transferability"] is None else _number(table[c]["transferability"]) for c in class_names]
        values += [_number(table[c]["prior"]) for c in class_names]
        values.append("|".join(row["dead_classes"]))
        if extra:
            values += [row.get("source_output", "softmax"), row.get("num_source_outputs", row["num_source_classes"]),
                       _modality_text(row.get("input_channels") or ()), str(bool(row.get("torchscript"))).lower(),
                       row.get("gbc_note", "")]
        writer.writerow(values)
    return text.getvalue()


def _channel_resolver(
    dataset_spec: Any, target_modality: str | Sequence[str] | None, datalist: Sequence[Mapping[str, Any]]
) -> Callable[[Any], tuple[str, ...]]:
    """``input_modality -> modality names, one per input channel`` (``None``: the target's); with a dataset the
    bundles' rule (:func:`~transrisk_components.data.registry.modality_channels`), without one names as given
    (``None`` then counts the target cases' images)."""

    def channels_of(modality: Any) -> tuple[str, ...]:
        modality = target_modality if modality is None else modality
        if dataset_spec is not None and modality is not None:
            return modality_channels(dataset_spec, modality, "input_modality", distinct=False)
        if modality is None:
            images = datalist[0].get("image") if datalist else None
            return ("target",) * (len(images) if isinstance(images, (list, tuple)) else 1)
        if isinstance(modality, str):
            if modality == ALL_MODALITIES:
                raise ValueError(f"input_modality {ALL_MODALITIES!r} needs the dataset (rank_sources' dataset_spec)")
            return (modality,)
        return tuple(map(str, modality))

    return channels_of


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
    target_modality: str | Sequence[str] | None = None,
    datalist_for_modality: Callable[[Any], Sequence[Mapping[str, Any]]] | None = None,
    mask: str = "nonzero",
    device: str | torch.device = "cpu",
    amp: bool = False,
    dead_class_margin: float = 0.05,
    gbc_voxels_per_class: int = 1000,
    dataset_spec: Any = None,
) -> list[dict[str, Any]]:
    """Rank candidate source models by pooled LEEP over the target training cases, best first.

    Args:
        candidates, candidates_file, default, network_factory: the candidates, see :func:`load_candidates`.
        datalist: the target training cases (target modality).
        preprocessing: whole-volume loading (``validate#preprocessing``).
        inferer: whole-volume inferer (``validate#inferer``).
        class_names: the target task's class names, index order.
        output_dir: where ``source_ranking.csv`` and ``source_ranking.png`` go; ``None`` writes nothing.
        target_modality: the modality setting of ``datalist`` (reported; a candidate whose ``input_modality`` is
            another one gets ``datalist_for_modality(input_modality)``, a list of names for several channels).
        datalist_for_modality: the same cases with another modality's image, or one image per channel for a list
            (the bundles' ``scenario.split('target_train', modality=...)``).
        mask, device, amp, dead_class_margin, gbc_voxels_per_class: see :func:`score_candidate`.
        dataset_spec: the dataset (:class:`~transrisk_components.data.registry.DatasetSpec`): resolves
            ``input_modality`` ``"all"`` and checks names; ``None`` takes them as given.

    Returns:
        One row per candidate, best first: ``{"rank", "name", "ckpt", "modality", "input_modality",
        "num_source_classes", "leep", "leep_floor", "leep_gain_over_floor", "gbc", "gbc_note", "num_voxels",
        "classes", "dead_classes", "source_output", "num_source_outputs", "input_channels", "torchscript"}``.

    Raises:
        ValueError: a candidate that cannot be used, e.g. a network whose input channels are not one per input
            image (every problem in one message, before any inference).
    """
    channels_of = _channel_resolver(dataset_spec, target_modality, datalist)
    loaded = load_candidates(candidates, candidates_file, default, network_factory, channels_of)
    target_channels = channels_of(None)

    def reads(candidate: SourceCandidate) -> str | tuple[str, ...] | None:
        """Which datalist a candidate reads: ``None`` the target cases, a name or a channel list another one."""
        modality = candidate.input_modality
        if modality is None or modality == target_modality or candidate.input_channels == target_channels:
            return None
        if isinstance(modality, str) and modality != ALL_MODALITIES:
            return modality
        return tuple(candidate.input_channels or modality)

    needed = {reads(c) for c in loaded} - {None}
    if needed and datalist_for_modality is None:
        wanted = sorted(_modality_text(m) for m in needed)
        raise ValueError(f"candidates want input modalities {wanted} but no datalist_for_modality was given")
    datalists = {m: list(datalist_for_modality(m if isinstance(m, str) else list(m)))  # fails before any inference
                 for m in sorted(needed, key=_modality_text)}
    if target_modality is None or isinstance(target_modality, str):
        target_seen = target_modality or "target"
    else:
        target_seen = _modality_text(target_channels)
    rows = []
    for number, candidate in enumerate(loaded, start=1):
        source = reads(candidate)
        cases = datalist if source is None else datalists[source]
        seen = target_seen if source is None else _modality_text(source)
        kind = ("" if candidate.output == "softmax"
                else f"; sigmoid, {candidate.num_outputs} regions -> {candidate.num_classes} on/off states")
        logger.info(
            "candidate %d/%d: %s (%s%s, %d classes%s) over %d target case(s), %s images",
            number, len(loaded), candidate.name, candidate.ckpt, ", TorchScript" if candidate.torchscript else "",
            candidate.num_classes, kind, len(cases), seen,
        )
        outputs = candidate.num_outputs or candidate.num_classes
        result = score_candidate(
            candidate.network, outputs, cases, preprocessing, inferer, class_names, mask, device, amp,
            dead_class_margin, gbc_voxels_per_class, candidate.output,
        )
        candidate.network.to("cpu")
        logger.info(
            "candidate %d/%d: %s LEEP %.4f (prior floor %.4f, gain %.4f), GBC %.4f%s%s",
            number, len(loaded), candidate.name, result["leep"], result["leep_floor"], result["leep_gain_over_floor"],
            result["gbc"], f" ({result['gbc_note']})" if result["gbc_note"] else "",
            f"; no information about {', '.join(result['dead_classes'])}" if result["dead_classes"] else "",
        )
        rows.append({
            "name": candidate.name,
            "ckpt": str(candidate.ckpt),
            "modality": candidate.modality,
            "input_modality": seen,
            "num_source_classes": candidate.num_classes,
            **result,
            "source_output": candidate.output,
            "num_source_outputs": outputs,
            "input_channels": list(candidate.input_channels or target_channels),
            "torchscript": candidate.torchscript,
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
