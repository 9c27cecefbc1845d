"""Export a bundle as a self-contained MONAI Model Zoo bundle: the folder a Zoo user downloads, and runs as it is.

Examples::

    python scripts/export_zoo_bundle.py fets --out /tmp/zoo
    python scripts/export_zoo_bundle.py fets --out /tmp/zoo --weights bundles/fets
    python scripts/export_zoo_bundle.py iseg --out /tmp/zoo --weights /runs/iseg --weights_url https://example.org/iseg_model.pt

``OUT/<bundle>/`` then holds:

- ``configs/``, ``LICENSE``, ``docs/data_license.txt``, ``docs/meta_schema.json``: the bundle's own files;
- ``transrisk_components/``: the package the configs' ``_target_``s name, copied in (without the experiment grid).
  The Zoo puts the bundle folder on ``PYTHONPATH`` (and ``python -m monai.bundle`` run from the folder finds it), and
  the package is not on the package index, so the code travels inside the bundle; ``configs/metadata.json`` names
  only packages the index has;
- ``docs/README.md`` in the Zoo's template (overview, data, training, inference, performance, license), made from the
  metadata and ``train.json``; the repository's bundle README follows as ``docs/guide.md``, with the document on reuse
  and resume it links to (``docs/reuse_and_resume.md``, shared by both bundles in the repository);
- with ``--weights RUN``: ``models/model.pt``, the model that ``RUN``'s evaluation scored. ``RUN`` is the bundle folder
  of a run the user made (``training``, then ``evaluating``); its ``eval/metrics_summary.json`` names the checkpoint
  it evaluated and that checkpoint's SHA-256, which must still match. ``eval_metrics`` in the metadata are that
  evaluation's means, and ``eval_data`` names the data they came from (split, cases, dataset or phantom) and how
  the weights were trained (epochs, the chosen candidate and its validation cases, from the run's records); the
  README says the same, with a warning when the weights are a phantom run or shorter than the defaults. Weights
  are never committed to git: they come from the user's run;
- with ``--weights_url URL`` as well: ``large_files.yml``, which tells the Zoo to download ``models/model.pt`` from
  ``URL`` (checked against its SHA-256): upload ``models/model.pt`` there and leave it out of the Zoo pull request.

The export is written into a hidden sibling folder and moved into place only when complete; an existing
``OUT/<bundle>`` is an error (it is never replaced).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fire
import torch
from monai.bundle import ConfigParser

import transrisk_components
from transrisk_components.data.phantom.io import MARKER
from transrisk_components.utils.io import atomic_write_text, file_sha256

__all__ = ["Evaluation", "export_zoo_bundle", "read_evaluation"]

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
PACKAGE = REPO / "transrisk_components"
#: Sub-packages the bundles never reach, left out of the vendored copy (the experiment grid runs the repository's
#: bundles, not the exported one).
NOT_VENDORED = ("experiments",)
#: Files of a bundle folder that the export copies (outputs -- models/, eval/, outputs/, runs/, data/ -- stay behind).
BUNDLE_FILES = ("LICENSE", "configs", "docs")
#: The repository's documents that both bundle READMEs link to, copied into the export's ``docs/``.
SHARED_DOCS = REPO / "docs"
REUSE_DOC = "reuse_and_resume.md"
_METRICS = ("dice", "hd95", "asd")


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of one checkpoint, as a user's run left it.

    Attributes:
        model: the checkpoint that was evaluated.
        sha256: its SHA-256 (as the evaluation recorded it, and as it is now).
        summary: ``eval/metrics_summary.json`` (``{"dataset", "task", "model", "n_cases", "regions"}``).
        cases: the evaluated case ids, in the order of ``metrics_per_case.csv``.
        data: one sentence naming the data: split, case count, dataset (or phantom), modality, task.
    """

    model: Path
    sha256: str
    summary: dict[str, Any]
    cases: list[str]
    data: str


def _is_plain(value: Any) -> bool:
    """A number, a string, or a list of numbers (a shape): short enough to name in a sentence."""
    return isinstance(value, (int, float, str)) or (isinstance(value, list) and all(isinstance(v, (int, float)) for v in value))


def _describe_dataset(dataset_dir: str, dataset: str) -> str:
    """``"the built-in fets phantom (seed 0, 72 subjects, ...)"`` or ``"the fets data at <dir>"``."""
    marker = Path(dataset_dir) / MARKER
    if marker.is_file():
        params = json.loads(marker.read_text(encoding="utf-8"))
        shown = ", ".join(f"{k} {v}" for k, v in sorted(params.items()) if _is_plain(v))
        return f"the built-in {dataset} phantom, not real images ({shown})"
    return f"the {dataset} data at {dataset_dir}"


def read_evaluation(run: str | os.PathLike) -> Evaluation:
    """The evaluation a run's ``eval/`` folder holds, tied to the checkpoint it scored.

    Args:
        run: the bundle folder (``bundle_root``) of a run that trained and then ran ``evaluating``.

    Raises:
        FileNotFoundError: no evaluation summary, or the checkpoint it names is gone.
        ValueError: the summary names no checkpoint (an evaluation by transrisk < 0.5.0), or the checkpoint changed
            since it was evaluated.
    """
    folder = Path(run).expanduser().resolve() / "eval"
    summary_path = folder / "metrics_summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(
            f"{summary_path} does not exist: run the evaluation first, e.g. python -m monai.bundle run evaluating "
            f"--config_file \"['configs/train.json','configs/evaluate.json']\" --bundle_root {Path(run)}"
        )
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    model = summary.get("model")
    if not model:
        raise ValueError(f"{summary_path} names no checkpoint (made before transrisk 0.5.0): run the evaluation again")
    path = Path(model["file"])
    if not path.is_file():
        raise FileNotFoundError(f"{summary_path} scored {path}, which no longer exists: run the evaluation again")
    sha256 = file_sha256(path)
    if sha256 != model["sha256"]:
        raise ValueError(
            f"{path} changed since {summary_path} scored it (sha256 {model['sha256'][:12]}... then, {sha256[:12]}... "
            "now): run the evaluation again"
        )
    with (folder / "metrics_per_case.csv").open(newline="", encoding="utf-8") as handle:
        cases = list(dict.fromkeys(row["case_id"] for row in csv.DictReader(handle)))
    return Evaluation(path, sha256, summary, cases, _describe_data(folder / "splits.json", summary, cases))


def _describe_data(splits_path: Path, summary: dict[str, Any], cases: list[str]) -> str:
    """Which split of which data the evaluated cases are (from the run's ``splits.json``)."""
    if not splits_path.is_file():
        return f"{len(cases)} {summary['dataset']} cases ({', '.join(cases)}), task {summary['task']}"
    splits = json.loads(splits_path.read_text(encoding="utf-8"))
    named = [name for name, items in splits["splits"].items() if sorted(c["case_id"] for c in items) == sorted(cases)]
    which = f"the {named[0]} split" if named else "cases"
    modality = splits["modality"]["target"] if isinstance(splits.get("modality"), dict) else splits.get("modality")
    return (
        f"{which} of {_describe_dataset(splits['dataset_dir'], splits['dataset'])}: {len(cases)} cases "
        f"({', '.join(cases)}), modality {modality}, task {summary['task']}"
    )


@dataclass(frozen=True)
class TrainingRun:
    """How the shipped weights were trained, from the records the run left beside them.

    Attributes:
        source_epochs: epochs of the source stage (``None``: the source checkpoint was given, not trained).
        finetune_epochs: epochs of the fine-tuning run that made the weights.
        chosen: the safe-transfer candidate the weights are (``None``: one fine-tuning run, no choice).
        reason: the selection rule's reason, with its uncertainty warning when there was one.
        validation_cases: the number of validation cases the choice rested on (``None`` without a choice).
        phantom: whether the weights were trained on the built-in phantom.
    """

    source_epochs: int | None
    finetune_epochs: int | None
    chosen: str | None
    reason: str | None
    validation_cases: int | None
    phantom: bool

    def sentence(self) -> str:
        """One sentence on the weights' training, for the README and ``eval_data``."""
        source = "a given source model" if self.source_epochs is None else f"{self.source_epochs} source epochs"
        text = f"trained with {source} and {self.finetune_epochs} fine-tuning epochs"
        if self.chosen is not None:
            text += f"; safe transfer kept the {self.chosen} candidate on {self.validation_cases} validation case(s)"
        return text + (" on the built-in phantom" if self.phantom else "")

    def warning(self, defaults: dict[str, Any]) -> str:
        """A warning when the weights are a phantom run or shorter than the bundle's defaults; empty otherwise."""
        short = [f"{n} {name} epochs (default {defaults[key]})" for name, key, n in
                 (("source", "source_epochs", self.source_epochs), ("fine-tuning", "max_epochs", self.finetune_epochs))
                 if n is not None and n < defaults[key]]
        reasons = (["they were trained on the built-in phantom, not on real images"] if self.phantom else [])
        reasons += [f"they are a short run: {', '.join(short)}"] if short else []
        if not reasons:
            return ""
        return (f"**Warning: these weights test the pipeline, they are not a model for clinical images**: "
                f"{'; '.join(reasons)}.")


def read_training(model: Path, eval_dir: Path) -> TrainingRun:
    """The :class:`TrainingRun` of ``model`` from the records of the run that made it: its provenance
    (``safe.fingerprint.json`` after safe transfer, else ``finetune.fingerprint.json``), the source model's record,
    the transfer report and ``splits.json``.

    Raises:
        FileNotFoundError: ``model`` has no record beside it (not made by this bundle's ``training``).
    """
    folder = model.parent
    safe, single = folder / "safe.fingerprint.json", folder / "finetune.fingerprint.json"
    chosen = reason = cases = None
    if safe.is_file():
        record = json.loads(safe.read_text(encoding="utf-8"))
        chosen, reason = record["chosen"], record.get("reason")
        runs = record["candidates"]  # run name -> its record; a kept ensemble's members all trained as long
        finetune = (runs.get(record.get("run", chosen)) or next(iter(runs.values()))).get("epochs")
        report = eval_dir / "transfer_report.json"
        if report.is_file():
            cases = json.loads(report.read_text(encoding="utf-8")).get("validation_cases")
    elif single.is_file():
        finetune = json.loads(single.read_text(encoding="utf-8")).get("epochs")
    else:
        raise FileNotFoundError(f"{model} has no record of how it was trained ({safe.name} or {single.name} beside it): "
                                "export weights that this bundle's training made")
    source_record = folder / "source.fingerprint.json"
    source = json.loads(source_record.read_text(encoding="utf-8")).get("epochs") if source_record.is_file() else None
    splits = eval_dir / "splits.json"
    phantom = splits.is_file() and (Path(json.loads(splits.read_text(encoding="utf-8"))["dataset_dir"]) / MARKER).is_file()
    return TrainingRun(source, finetune, chosen, reason, cases, phantom)


def eval_metrics(template: dict[str, Any], summary: dict[str, Any]) -> dict[str, float | None]:
    """The metadata's ``eval_metrics`` keys (``mean_<metric>_<region>``) filled from an evaluation summary.

    Raises:
        ValueError: a key names a metric or region the summary does not have.
    """
    regions = {name.lower(): stats for name, stats in summary["regions"].items()}
    filled: dict[str, float | None] = {}
    for key in template:
        parts = key.split("_", 2)
        if len(parts) != 3 or parts[0] != "mean" or parts[1] not in _METRICS or parts[2] not in regions:
            raise ValueError(f"eval_metrics key {key!r} is not mean_<{'|'.join(_METRICS)}>_<{'|'.join(regions)}>")
        mean = regions[parts[2]][parts[1]]["mean"]
        filled[key] = None if mean is None else round(float(mean), 4)
    return filled


def _check_weights_fit(configs: Path, weights: Path, bundle_root: Path) -> None:
    """Load ``weights`` into the bundle's default ``network_def`` (``inference.json``), strictly.

    Raises:
        ValueError: the checkpoint was trained with other network settings than the exported configs' defaults.
    """
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    parser.update({"bundle_root": str(bundle_root)})
    network = parser.get_parsed_content("network_def")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"{weights} does not fit the bundle's default network_def (configs/inference.json): it was trained with "
            f"other network settings. Export the weights of a run with the default network.\n{error}"
        ) from error


def _vendor_package(target: Path) -> None:
    """Copy the package's Python files to ``target`` (no caches, nothing of :data:`NOT_VENDORED`)."""
    for source in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in source.parts or source.relative_to(PACKAGE).parts[0] in NOT_VENDORED:
            continue
        destination = target / source.relative_to(PACKAGE)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)


def _requirements(metadata: dict[str, Any]) -> list[str]:
    """The pins the Zoo's CI derives from the metadata: MONAI, torch, numpy, then ``required_packages_version``."""
    pins = [f"monai=={metadata['monai_version']}", f"torch=={metadata['pytorch_version']}", f"numpy=={metadata['numpy_version']}"]
    return pins + [f"{name}=={version}" for name, version in metadata["required_packages_version"].items()]


def _large_files_yml(url: str, sha256: str) -> str:
    """The Zoo's ``large_files.yml``: where ``models/model.pt`` is downloaded from, and its hash."""
    return (
        "large_files:\n"
        '- path: "models/model.pt"\n'
        f'  url: "{url}"\n'
        f'  hash_val: "{sha256}"\n'
        '  hash_type: "sha256"\n'
    )


def _performance(metadata: dict[str, Any], evaluation: Evaluation | None, training: TrainingRun | None) -> str:
    if evaluation is None:
        return (
            "No weights ship with this export (`eval_metrics` are `null`): train them with the commands below, or "
            "export again with `--weights` from a run you made."
        )
    rows = "\n".join(f"| `{key}` | {'n/a' if value is None else value} |" for key, value in metadata["eval_metrics"].items())
    return (
        f"`models/model.pt` (SHA-256 `{evaluation.sha256}`), {training.sentence()}, evaluated with `evaluating` on "
        f"{evaluation.data}.\n\n"
        f"| metric | value |\n| --- | --- |\n{rows}\n\n"
        "Dice is in [0, 1]; HD95 in mm (`n/a`: no case with both a predicted and a true region). "
        "Numbers on the phantom test the pipeline on a known anatomy, not the method's value on real images."
    )


def _weights_warning(train: dict[str, Any], training: TrainingRun | None) -> str:
    """The README's warning paragraph on the shipped weights (with its blank line), or nothing."""
    warning = training.warning(train) if training is not None else ""
    return f"{warning}\n\n" if warning else ""


def _readme(metadata: dict[str, Any], train: dict[str, Any], evaluation: Evaluation | None, training: TrainingRun | None) -> str:
    """``docs/README.md`` of the exported bundle, in the Model Zoo's template."""
    net = train["network_def"]
    image = metadata["network_data_format"]["inputs"]["image"]
    pred = metadata["network_data_format"]["outputs"]["pred"]
    install = " ".join(p for p in _requirements(metadata) if not p.startswith("torch=="))
    references = "\n".join(f"- {r}" for r in metadata["references"])
    return f"""# {metadata['name']}

Version {metadata['version']}, exported from transrisk {transrisk_components.__version__} for the MONAI Model Zoo.
The code that the configs' `_target_`s name is inside this folder (`transrisk_components/`, Apache License 2.0), so
the bundle runs as downloaded: nothing to install but the packages below. {metadata['intended_use']}

## Model Overview

{metadata['description']}

Task: {metadata['task']}.

## Data

{metadata['data_source']}.

Without `--dataset_dir`, the first run generates the built-in phantom in the dataset's native folder layout under
`data/phantom/`. For real data, pass `--dataset_dir` the dataset root in its native layout (see `docs/guide.md`,
"Data"); the data licence is in `docs/data_license.txt`.

## Training configuration

`training` runs the stages, each a configuration of its own: `configs/source.json` trains a source network on the
source modality ({train['source_modality']}); `configs/risk.json` runs it once over the target training cases and
writes one transfer risk map per case; `configs/train.json` fine-tunes it on the target modality
({train['target_modality']}) with every voxel's cross-entropy weighted by `1 + {train['risk']['strength']:g} * risk`,
and, by default, fine-tunes plain and from-scratch starts beside it and keeps the one the validation cases prefer
(`eval/transfer_report.json`). `pretrain`, `risk_map` and `finetune` stop after the source, the maps, one fine-tuning
run.
Network: MONAI `{net['_target_']}` (init_filters {net['init_filters']}, blocks_down {net['blocks_down']}); patches
{train['patch_size']}; by default {train['source_epochs']} source and {train['max_epochs']} fine-tuning epochs; learning rate
{train['learning_rate']}; {train['num_target_train']} target training, {train['num_target_val']} validation and
{train['num_target_test']} test cases.

Each stage records what made its outputs (a fingerprint) and reuses them only while that still holds. Files the
bundle did not make are never deleted or changed, whatever `--overwrite` says: the downloaded `models/model.pt` is
kept, and the bundle trains into `models/trained/` beside it (`source.pt`, `model.pt`, their fingerprints and run
folders, as the log says); evaluation and inference use `models/trained/model.pt` once it exists, the downloaded model
until then.

### Input

{metadata['image_classes']} (channels: {', '.join(image['channel_def'].values())}).

### Output

{metadata['pred_classes']} (channels: {', '.join(pred['channel_def'].values())}).

## Performance

{_weights_warning(train, training)}{_performance(metadata, evaluation, training)}

## MONAI Bundle Commands

Install (torch first, the build for your machine; then the versions `configs/metadata.json` names), and run every
command from this folder:

```bash
pip install torch=={metadata['pytorch_version']}
pip install {install}
```

Training (all stages; `--dataset_dir` for real data):

```bash
python -m monai.bundle run training --config_file configs/train.json
```

Fine-tuning from the downloaded model as the source model (`--train_source false`: the checkpoint is given, only
read), in a bundle folder of its own so that it does not meet the outputs of a run made here before:

```bash
python -m monai.bundle run training --config_file configs/train.json --source_ckpt models/model.pt --train_source false \
    --bundle_root ../finetuned_from_download
```

From Python, build the workflow with `transrisk_components.bundle.workflow.entry.TransferWorkflow` (MONAI's
`ConfigWorkflow`, which also hands its config files and overrides to the stages `training` runs).

Evaluation on the target test split (`eval/metrics_per_case.csv`, `eval/metrics_summary.json`):

```bash
python -m monai.bundle run evaluating --config_file "['configs/train.json','configs/evaluate.json']"
```

Inference (`--input` a folder of images, or a datalist JSON; predictions in `eval/predictions/`):

```bash
python -m monai.bundle run inferring --config_file configs/inference.json --input /path/to/images
```

TorchScript export (`models/trained/model.pt` for a model trained here):

```bash
python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt \\
    --meta_file configs/metadata.json --config_file configs/inference.json
```

Metadata check, offline:

```bash
python -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath docs/meta_schema.json
```

More (risk-map variants, source ranking, multi-GPU, real data, what each setting does): `docs/guide.md`.

## References

{references}

## License

Code and configs: Apache License 2.0 (`LICENSE`). Data: see `docs/data_license.txt`.
"""


def _guide(bundle: str, readme: str) -> str:
    """The repository's bundle README as ``docs/guide.md``, with a note on what differs in the exported bundle; its
    link to the shared reuse document points at the copy beside it, other links into the repository become the
    repository's path in words."""
    note = (
        f"> From the transrisk repository's `bundles/{bundle}/docs/README.md` (version {transrisk_components.__version__}). "
        "In this exported bundle the code is already inside (`transrisk_components/`): skip `pip install -e`, and run "
        "the commands from this folder. Results it cites under `docs/results/` are in that repository.\n\n"
    )
    readme = readme.replace(f"../../../docs/{REUSE_DOC}", REUSE_DOC)
    return note + re.sub(r"\[([^\]]+)\]\(\.\./\.\./\.\./([^)]+)\)", r"\1 (the transrisk repository's `\2`)", readme)


def export_zoo_bundle(bundle: str, out: str | os.PathLike, weights: str | None = None, weights_url: str | None = None) -> Path:
    """Write ``OUT/<bundle>/``, a self-contained Model Zoo bundle (see the module docstring); return its path.

    Args:
        bundle: ``"fets"`` or ``"iseg"``.
        out: the folder to write into (outside the repository, typically).
        weights: the bundle folder of a run the user made (trained and evaluated): its evaluated model ships as
            ``models/model.pt`` and its evaluation fills ``eval_metrics``.
        weights_url: where ``models/model.pt`` will be hosted (writes ``large_files.yml``; needs ``weights``).

    Raises:
        FileNotFoundError: no such bundle.
        FileExistsError: ``OUT/<bundle>`` exists.
        ValueError: another checkout's package is imported, a version mismatch, ``weights_url`` without ``weights``,
            or weights that do not fit the network.
    """
    source = BUNDLES / bundle
    if not (source / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"no bundle {bundle!r} under {BUNDLES} (choose one of {sorted(p.name for p in BUNDLES.iterdir())})")
    if weights_url is not None and weights is None:
        raise ValueError("--weights_url names where models/model.pt will be hosted: pass --weights RUN as well")
    imported = Path(transrisk_components.__file__).resolve().parent
    if imported != PACKAGE.resolve():
        raise ValueError(
            f"the transrisk_components imported ({imported}) is not this repository's ({PACKAGE}), which the export "
            f"copies: pip install -e {REPO}, or run with PYTHONPATH={REPO}"
        )
    metadata = json.loads((source / "configs" / "metadata.json").read_text(encoding="utf-8"))
    if metadata["version"] != transrisk_components.__version__:
        raise ValueError(
            f"bundle {bundle} is version {metadata['version']}, the package {transrisk_components.__version__}: "
            "they must agree (see CHANGELOG.md)"
        )
    target = Path(out).expanduser().resolve() / bundle
    if target.exists():
        raise FileExistsError(f"{target} exists: remove it or choose another --out (an export never replaces a folder)")
    target.parent.mkdir(parents=True, exist_ok=True)
    evaluation = read_evaluation(weights) if weights is not None else None
    training = None
    partial = Path(tempfile.mkdtemp(prefix=f".{bundle}.partial-", dir=target.parent))
    try:
        for name in BUNDLE_FILES:
            copy = shutil.copytree if (source / name).is_dir() else shutil.copy2
            copy(source / name, partial / name)
        readme = (partial / "docs" / "README.md").read_text(encoding="utf-8")
        (partial / "docs" / "README.md").unlink()
        _vendor_package(partial / "transrisk_components")
        if evaluation is not None:
            _check_weights_fit(partial / "configs", evaluation.model, partial)
            training = read_training(evaluation.model, Path(weights).expanduser().resolve() / "eval")
            (partial / "models").mkdir()
            shutil.copy2(evaluation.model, partial / "models" / "model.pt")
            metadata["eval_metrics"] = eval_metrics(metadata["eval_metrics"], evaluation.summary)
            metadata["eval_data"] = f"{evaluation.data}; models/model.pt sha256 {evaluation.sha256}, {training.sentence()}"
            atomic_write_text(partial / "configs" / "metadata.json", json.dumps(metadata, indent=4) + "\n")
        if weights_url is not None:
            atomic_write_text(partial / "large_files.yml", _large_files_yml(weights_url, evaluation.sha256))
        train = json.loads((source / "configs" / "train.json").read_text(encoding="utf-8"))
        atomic_write_text(partial / "docs" / "README.md", _readme(metadata, train, evaluation, training))
        atomic_write_text(partial / "docs" / "guide.md", _guide(bundle, readme))
        shutil.copy2(SHARED_DOCS / REUSE_DOC, partial / "docs" / REUSE_DOC)
        umask = os.umask(0)
        os.umask(umask)
        partial.chmod(0o777 & ~umask)  # mkdtemp made it private; the exported folder has the usual permissions
        os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if evaluation is None:
        logger.warning(
            "%s: no --weights, so no models/model.pt and no large_files.yml; the Zoo's verify_bundle.py needs one of "
            "them (export again with --weights from a run you made)", target,
        )
    return target


def main(bundle: str, out: str, weights: str | None = None, weights_url: str | None = None) -> None:
    """Export BUNDLE ("fets" or "iseg") to OUT/BUNDLE as a self-contained Model Zoo bundle and print its path.

    Args:
        bundle: "fets" or "iseg".
        out: the folder to write into.
        weights: the bundle folder of a run you made (training, then evaluating): its evaluated model and metrics.
        weights_url: where models/model.pt will be hosted (writes large_files.yml).
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        print(f"exported: {export_zoo_bundle(bundle, out, weights, weights_url)}")
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"export_zoo_bundle: {error}") from None


if __name__ == "__main__":
    fire.Fire(main)
