"""A transfer scenario: which cases, modality and task the source and the target use, split once.

The splits are deterministic, stable per case and disjoint (a subject is in at most one of source /
target-train / target-val / target-test); :meth:`Scenario.write_splits` writes them to ``<output_dir>/splits.json``
(a run does once it has been accepted) so that it can be audited and repeated. Stable per case: every case has a rank of its own, the SHA-256 of ``"<seed>:<case_id>"``, and the
splits take cases in rank order: target-test, then target-val from the target cases; then the source from the
remaining labelled source cases; then target-train from the target cases neither of those took. Test,
validation and source cases therefore do not depend on the number of target training cases, and the training
sets of a few-shot curve are nested (the 2 cases of ``num_target_train=2`` are among the 4 of ``=4``), so the
points of the curve share their test cases and their source model. (With ``num_source=None`` the source takes
every case the target splits left, after them.) Adding or removing one case never reorders the others: removing
a selected case only pulls the next-ranked case across each boundary after it, removing an unselected case
changes nothing else. Cases without a label file are left out with a warning that names them, and listed in
``splits.json`` under ``"unlabelled"``. Each split is a MONAI datalist: ``{"case_id", "image": [path], "label": path}`` with the
images of the split's modalities only, one path per input channel in channel order (one path for a single modality).

k-fold choice (``folds`` >= 2, used by safe transfer's ``safe#folds``) pools target-train and target-val: the pooled
cases, in rank order, are dealt to the folds in turn (case ``i`` to fold ``i % folds``). With ``fold=f`` target-val is
fold ``f`` and target-train the other folds; with ``fold="all"`` target-train is the whole pool and target-val is the
same pool (the final run of the chosen start, which has no held-out case: its checkpoint is chosen on the cases it
trains on). Source and target-test do not change.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from transrisk_components.data.registry import get_dataset, modality_channels
from transrisk_components.data.checks import check_cases
from transrisk_components.data.layout import DatasetLayoutError
from transrisk_components.utils.distributed import barrier, is_rank0
from transrisk_components.utils.io import atomic_write_text

__all__ = ["ALL_FOLDS", "Scenario", "SPLIT_NAMES", "fold_ids", "rank_order", "resolve_dataset_dir"]

logger = logging.getLogger(__name__)

SPLIT_NAMES: tuple[str, ...] = ("source", "target_train", "target_val", "target_test")

#: The ``fold`` of the run that trains on every pooled case (see the module docstring).
ALL_FOLDS = "all"

#: File under ``output_dir`` remembering which files passed the voxel checks (see :func:`check_cases`).
CHECK_CACHE = "input_checks.json"


def _partition_key(partition: str | int | None) -> str | None:
    """A partition id compared by value: ``1``, ``"1"`` and ``"01"`` are one institution."""
    if partition is None:
        return None
    text = str(partition).strip()
    return str(int(text)) if text.isdigit() else text


def rank_order(case_ids: Collection[str], seed: int) -> list[str]:
    """``case_ids`` ordered by the SHA-256 of ``"<seed>:<case_id>"``: a case's place depends on itself alone."""
    return sorted(case_ids, key=lambda case_id: (hashlib.sha256(f"{seed}:{case_id}".encode()).hexdigest(), case_id))


def fold_ids(pool: Sequence[str], folds: int) -> list[list[str]]:
    """The case ids of each of ``folds`` folds: the ``pool`` (in rank order) dealt out in turn.

    Raises:
        ValueError: fewer than 2 folds, or more folds than pooled cases.
    """
    if not 2 <= folds <= len(pool):
        raise ValueError(f"k-fold choice needs 2 <= folds <= the {len(pool)} pooled target cases "
                         f"(num_target_train + num_target_val), got {folds}")
    return [list(pool[index::folds]) for index in range(folds)]


def resolve_dataset_dir(dataset: str, dataset_dir: str, phantom_dir: str | None, seed: int = 0) -> str:
    """Return the dataset root, generating the built-in phantom on first use.

    Args:
        dataset: registry name (``"fets"``, ``"iseg"``).
        dataset_dir: the dataset root the user asked for.
        phantom_dir: the bundle's phantom folder. Only when ``dataset_dir`` is the dataset root inside it
            (e.g. ``<phantom_dir>/MICCAI_FeTS2021_TrainingData``) and does not exist yet is a phantom generated;
            any other missing folder is an error.
        seed: phantom seed.

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist and is not the phantom's root.
    """
    root = Path(dataset_dir).expanduser().resolve()
    if is_rank0() and not root.exists():
        if phantom_dir is None or root.parent != Path(phantom_dir).expanduser().resolve():
            raise FileNotFoundError(
                f"dataset_dir {root} does not exist; point --dataset_dir at a {dataset} dataset root "
                "(omit it to use the built-in phantom)"
            )
        spec = get_dataset(dataset)
        logger.info(
            "dataset_dir %s not found: generating the built-in %s phantom (%d subjects) on first use",
            root,
            dataset,
            spec.default_phantom_subjects,
        )
        made = Path(spec.make_phantom(root.parent, subjects=spec.default_phantom_subjects, seed=seed)).resolve()
        if made != root:
            raise FileNotFoundError(f"the {dataset} phantom was written to {made}, but dataset_dir is {root}")
    barrier()
    if not root.exists():
        raise FileNotFoundError(f"dataset_dir {root} does not exist")
    return str(root)


class Scenario:
    """Source / target splits of one dataset for a transfer experiment.

    Args:
        dataset: registry name (``"fets"``, ``"iseg"``).
        dataset_dir: dataset root (see :func:`resolve_dataset_dir` for the phantom default).
        output_dir: where ``splits.json`` is written.
        source_modality: modality the source model sees, e.g. ``"t1"``; or several, one per input channel: a list
            (``["t1ce", "flair"]``) or ``"all"`` (see :func:`~transrisk_components.data.registry.modality_channels`).
        target_modality: modality of the target cases, e.g. ``"flair"``; or several, as ``source_modality``.
        source_task: task of the source model (e.g. ``"multiclass"``, ``"WT"``).
        target_task: task of the target model.
        num_target_train: few-shot size of the target training set.
        num_target_val: target validation cases.
        num_target_test: target test cases.
        num_source: source cases (``None``: every remaining labelled case).
        seed: seed of the case ranking (see the module docstring).
        phantom_dir: the bundle's phantom folder (see :func:`resolve_dataset_dir`).
        partition_csv: partition file for cross-site scenarios (a path, or a file name in ``dataset_dir``).
        source_partitions: partitions (institutions) the source cases come from; ``None`` for all.
        target_partitions: partitions the target cases come from; ``None`` for all.
        folds: k-fold choice over target-train and target-val pooled (module docstring); ``1``: none.
        fold: with ``folds`` >= 2, the fold held out as target-val (0 to ``folds - 1``) or :data:`ALL_FOLDS`;
            ``None``: the ordinary split, whatever ``folds`` says.
        check_inputs: run :func:`~transrisk_components.data.checks.check_cases` on every selected case: headers
            every time, voxels once per file version (remembered in ``check_cache``).
        check_cache: the file remembering which files passed the voxel checks (default
            ``<output_dir>/input_checks.json``).
    """

    def __init__(
        self,
        dataset: str,
        dataset_dir: str,
        output_dir: str,
        source_modality: str,
        target_modality: str,
        source_task: str,
        target_task: str,
        num_target_train: int,
        num_target_val: int,
        num_target_test: int,
        num_source: int | None = None,
        seed: int = 0,
        phantom_dir: str | None = None,
        partition_csv: str | None = None,
        source_partitions: Sequence[str | int] | None = None,
        target_partitions: Sequence[str | int] | None = None,
        folds: int = 1,
        fold: int | str | None = None,
        check_inputs: bool = True,
        check_cache: str | None = None,
    ) -> None:
        self.spec = get_dataset(dataset)
        for role, task in (("source_task", source_task), ("target_task", target_task)):
            if task not in self.spec.tasks:
                raise ValueError(f"{role} {task!r} is not a {dataset} task; choose one of {list(self.spec.tasks)}")
        self.channels = {
            role: modality_channels(self.spec, modality, f"{role}_modality")
            for role, modality in (("source", source_modality), ("target", target_modality))
        }
        for role, count in (("num_target_train", num_target_train), ("num_target_val", num_target_val)):
            if count < 1:
                raise ValueError(f"{role} must be >= 1, got {count}")
        if fold is not None and not (fold == ALL_FOLDS or (isinstance(fold, int) and 0 <= fold < folds)):
            raise ValueError(f"fold {fold!r}: must be 0 to {folds - 1} (the folds of safe#folds {folds}) or {ALL_FOLDS!r}")
        if (source_partitions or target_partitions) and partition_csv is None:
            raise ValueError("source_partitions / target_partitions need a partition_csv")
        self.dataset = dataset
        self.dataset_dir = dataset_dir
        self.phantom_dir = phantom_dir
        self.output_dir = Path(output_dir)
        self.modality = {"source": source_modality, "target": target_modality}
        self.task = {"source": source_task, "target": target_task}
        self.counts = {"target_train": num_target_train, "target_val": num_target_val, "target_test": num_target_test}
        self.num_source = num_source
        self.seed = seed
        self.partition_csv = partition_csv
        self.partitions = {
            "source": None if source_partitions is None else {_partition_key(p) for p in source_partitions},
            "target": None if target_partitions is None else {_partition_key(p) for p in target_partitions},
        }
        self.folds, self.fold = folds, fold
        self.check_inputs = check_inputs
        self.check_cache = Path(check_cache) if check_cache else self.output_dir / CHECK_CACHE
        self._root: str | None = None
        self._unlabelled: set[str] = set()
        self._splits: dict[str, list[dict]] | None = None
        self._folds: list[list[str]] = []

    def split(self, name: str, modality: str | Sequence[str] | None = None) -> list[dict]:
        """One split (``"source"``, ``"target_train"``, ``"target_val"``, ``"target_test"``), preparing the
        scenario on first use (see :meth:`prepare`).

        Args:
            name: the split.
            modality: the same cases with the images of other modalities (e.g. the T2 image of the target training
                cases, for a source model trained on T2; or a list, one image per channel, for a multi-channel
                source model, where a name may repeat); ``None`` keeps the split's own modalities.

        Raises:
            ValueError: unknown split or modality, or a case of the split has no image of ``modality`` (names it).
        """
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; choose one of {list(SPLIT_NAMES)}")
        cases = self.prepare()[name]
        if modality is None:
            return cases
        channels = modality_channels(self.spec, modality, "modality", distinct=False)
        kwargs: dict[str, Any] = {} if self.partition_csv is None else {"partition_csv": self.partition_csv}
        images = {c["case_id"]: list(c["image"]) for c in self.spec.datalist(self._root, modalities=list(channels), **kwargs)}
        missing = [c["case_id"] for c in cases if c["case_id"] not in images]
        if missing:
            raise ValueError(f"cases {missing} of split {name!r} have no {', '.join(channels)} image in {self._root}")
        return [{**c, "image": images[c["case_id"]]} for c in cases]

    def _cases(self, role: str) -> tuple[dict[str, dict], list[str]]:
        """Labelled cases of one role's modality (and partitions), by case id, and the folder's layout problems for
        that modality (cases missing it, misnamed folders; those cases are left out); unlabelled ones are noted."""
        kwargs: dict[str, Any] = {}
        if self.partition_csv is not None:
            kwargs["partition_csv"] = self.partition_csv
        try:
            cases, problems = self.spec.datalist(self._root, modalities=list(self.channels[role]), **kwargs), []
        except DatasetLayoutError as error:
            cases, problems = error.cases, error.problems
        wanted = self.partitions[role]
        cases = [c for c in cases if wanted is None or _partition_key(c.get("partition")) in wanted]
        self._unlabelled.update(c["case_id"] for c in cases if c.get("label") is None)
        return {c["case_id"]: c for c in cases if c.get("label") is not None}, problems

    def _raise_layout(self, problems: list[str], roles: list[dict[str, dict]]) -> None:
        """Stop with one error listing the folder's layout ``problems`` and what the input checks find in the complete
        cases of every role (their files, with the voxel-check cache), so that one run shows every defect.

        Raises:
            DatasetLayoutError: always.
        """
        found = [f"{len(problems)} problem(s) with the {self.dataset} folder {self._root}:", *(f"  {p}" for p in problems)]
        if self.check_inputs:
            for cases in filter(None, roles):  # a role with no complete case: its cases' problems are listed above
                try:
                    check_cases(list(cases.values()), self.spec, cache_path=self.check_cache)
                except ValueError as error:
                    found.append(f"and in the complete cases, {error}")
        raise DatasetLayoutError("\n".join(dict.fromkeys(found)), problems, [])

    def prepare(self) -> dict[str, list[dict]]:
        """Resolve the dataset (generating the phantom on first use), split it and check the cases; later calls return
        the same splits without doing anything. Nothing is written but the voxel-check cache (see
        :meth:`write_splits`).

        Returns:
            Split name -> datalist, for every name in :data:`SPLIT_NAMES`.

        Raises:
            DatasetLayoutError: the folder misses or misnames files (one error listing every problem of the source
                and target modalities, and what the input checks find in the complete cases).
            ValueError: source and target partitions overlap, a split would get too few cases, or input
                checks fail (one error listing every bad case).
        """
        if self._splits is not None:
            return self._splits
        self._root = resolve_dataset_dir(self.dataset, self.dataset_dir, self.phantom_dir, self.seed)
        if self.partitions["source"] and self.partitions["target"]:
            shared = self.partitions["source"] & self.partitions["target"]
            if shared:
                raise ValueError(f"source_partitions and target_partitions overlap: {sorted(shared)}")
        (source_cases, source_problems), (target_cases, target_problems) = self._cases("source"), self._cases("target")
        layout = list(dict.fromkeys(source_problems + target_problems))
        if layout:
            self._raise_layout(layout, [source_cases, target_cases])
        if self._unlabelled:
            logger.warning(
                "%d cases in %s have no label file and are left out of every split: %s (expected for validation or "
                "test subjects; for a training case, restore its label file)",
                len(self._unlabelled),
                self._root,
                ", ".join(sorted(self._unlabelled)),
            )
        target_ids = rank_order(target_cases, self.seed)
        needed = sum(self.counts.values())
        if len(target_ids) < needed:
            raise ValueError(
                f"too few labelled target cases in {self._root}: need {needed} "
                f"({', '.join(f'{k} {v}' for k, v in self.counts.items())}), found {len(target_ids)}"
            )
        ids = self._split_ids(target_ids, set(source_cases))
        if self.folds >= 2:
            ids.update(self._fold_split(ids, target_ids))
        splits = {
            name: [self._entry(source_cases[i] if name == "source" else target_cases[i]) for i in ids[name]]
            for name in SPLIT_NAMES
        }
        if self.check_inputs:
            check_cases(
                [case for name in SPLIT_NAMES for case in splits[name]],
                self.spec,
                cache_path=self.check_cache,
            )
        self._splits = splits
        return splits

    def _split_ids(self, target_ids: list[str], source_ids: set[str]) -> dict[str, list[str]]:
        """Case ids per split, in the order of the module docstring: test, val, source, train.

        Args:
            target_ids: labelled target cases in rank order (at least ``sum(self.counts.values())`` of them).
            source_ids: labelled source cases.

        Raises:
            ValueError: too few cases are left for the source or for target-train.
        """
        n_test, n_val = self.counts["target_test"], self.counts["target_val"]
        ids = {"target_test": target_ids[:n_test], "target_val": target_ids[n_test : n_test + n_val]}
        held_out = set(ids["target_test"]) | set(ids["target_val"])
        if self.num_source is not None:
            ids["source"] = rank_order(source_ids - held_out, self.seed)[: self.num_source]
        taken = held_out | set(ids.get("source", []))
        ids["target_train"] = [i for i in target_ids if i not in taken][: self.counts["target_train"]]
        if len(ids["target_train"]) < self.counts["target_train"]:
            raise ValueError(
                f"too few labelled target cases in {self._root} for {self.counts['target_train']} target training "
                f"cases: {len(ids['target_train'])} are left after {n_test} test, {n_val} validation and "
                f"{self.num_source} source cases"
            )
        if self.num_source is None:
            ids["source"] = rank_order(source_ids - held_out - set(ids["target_train"]), self.seed)
        if len(ids["source"]) < max(1, self.num_source or 1):
            raise ValueError(
                f"too few labelled source cases in {self._root}: need {self.num_source or 1}, "
                f"found {len(ids['source'])} after taking {n_test} test and {n_val} validation cases"
            )
        return ids

    def _fold_split(self, ids: dict[str, list[str]], target_ids: list[str]) -> dict[str, list[str]]:
        """Target-train and target-val of :attr:`fold` (module docstring), in rank order, from the ordinary split's
        ``ids`` (none when :attr:`fold` is ``None``); remembers every fold's cases for ``splits.json``."""
        pooled = set(ids["target_train"]) | set(ids["target_val"])
        ranked = [case_id for case_id in target_ids if case_id in pooled]
        self._folds = fold_ids(ranked, self.folds)
        if self.fold is None:
            return {}
        if self.fold == ALL_FOLDS:
            return {"target_train": ranked, "target_val": ranked}
        held_out = self._folds[int(self.fold)]
        return {"target_train": [i for i in ranked if i not in held_out], "target_val": held_out}

    @staticmethod
    def _entry(case: dict) -> dict:
        """A datalist entry holding only what the transforms read."""
        return {"case_id": case["case_id"], "image": list(case["image"]), "label": case["label"]}

    def write_splits(self) -> Path:
        """Write the scenario and its splits to ``<output_dir>/splits.json`` (rank 0 only); return its path."""
        splits = self.prepare()
        path = self.output_dir / "splits.json"
        if not is_rank0():
            return path
        record = {
            "dataset": self.dataset,
            "dataset_dir": self._root,
            "modality": self.modality,
            "task": self.task,
            "seed": self.seed,
            "partition_csv": self.partition_csv,
            "partitions": {k: None if v is None else sorted(v) for k, v in self.partitions.items()},
            "unlabelled": sorted(self._unlabelled),
            **({"folds": self._folds, "fold": self.fold} if self._folds else {}),
            "splits": splits,
        }
        atomic_write_text(path, json.dumps(record, indent=2))
        logger.info("splits written to %s: %s", path, ", ".join(f"{name} {len(splits[name])}" for name in SPLIT_NAMES))
        return path
