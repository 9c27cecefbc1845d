"""Where a bundle run reads and writes: the bundle folder, the folder it trains into, the model it evaluates.

MONAI sets no config id for the bundle folder: a Model Zoo config usually says ``"bundle_root": "."``, which
writes into whatever directory the command was started from. :func:`bundle_root` derives the folder from the
``--config_file`` argument of the command line instead (``python -m monai.bundle run ...``, ``ckpt_export``,
``verify_net_in_out``): the folder above that file's ``configs/`` directory. A workflow built in Python passes
``bundle_root`` itself (:class:`~transrisk_components.bundle.workflow.entry.TransferWorkflow` does it from its config
files); the stages of a run get it from the run, explicitly.

Where the bundle keeps its models (``models_dir``, ``<bundle_root>/models``) and the files a Model Zoo download ships
there can coexist: :func:`ckpt_dir` is the folder the bundle trains into -- ``models_dir``, or
``models_dir/trained`` when ``models_dir/model.pt`` is a model the bundle did not make (no fingerprint record of
ours names it); :func:`model_file` is the model evaluation and inference use -- the bundle's own once it trained one,
the downloaded one until then.
"""

from __future__ import annotations

import ast
import logging
import sys
from pathlib import Path

from transrisk_components.bundle.io.records import RECORD_SUFFIX, named_by_a_record

__all__ = ["MODEL", "TRAINED", "bundle_root", "ckpt_dir", "folder_of", "model_file"]

logger = logging.getLogger(__name__)

#: Sub-folder of ``models_dir`` that the bundle trains into beside a model it did not make.
TRAINED = "trained"
#: The published model's file name (the Model Zoo's ``models/model.pt``).
MODEL = "model.pt"


def folder_of(config_file: str | Path) -> Path:
    """The bundle folder for a config file: the parent of ``configs/``, else the file's own folder."""
    folder = Path(config_file).expanduser().resolve().parent
    return folder.parent if folder.name == "configs" else folder


def _from_argv(argv: list[str]) -> Path | None:
    """The bundle folder of the first ``--config_file`` on a command line, if any."""
    for index, arg in enumerate(argv):
        value = None
        if arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        elif arg == "--config_file" and index + 1 < len(argv):
            value = argv[index + 1]
        if value is None:
            continue
        if value.startswith("["):  # fire passes a list of files as a Python literal
            value = ast.literal_eval(value)[0]
        return folder_of(value)
    return None


def bundle_root() -> str:
    """Return the absolute path of the bundle folder holding the config being parsed.

    Raises:
        RuntimeError: no ``--config_file`` argument names the config.
    """
    root = _from_argv(sys.argv)
    if root is None:
        raise RuntimeError(
            "cannot tell which bundle folder this config belongs to (the command line has no --config_file); pass "
            "bundle_root explicitly (--bundle_root bundles/fets, or bundle_root=... in Python)"
        )
    logger.debug("bundle_root = %s", root)
    return str(root)


def ckpt_dir(models_dir: str) -> str:
    """The folder this bundle trains into (``source.pt``, ``model.pt``, their fingerprints and run folders).

    ``models_dir`` itself, unless ``models_dir/model.pt`` is a model the bundle did not make -- a file that no
    fingerprint record of ours names, e.g. a Model Zoo download's weights: then ``models_dir/trained``, so that
    training never deletes or changes that model. Once ``models_dir/trained`` holds a record of ours it stays the
    folder (removing the downloaded model later does not move the bundle's runs back). Nothing is written here.
    """
    models = Path(models_dir)
    trained = models / TRAINED
    shipped = models / MODEL
    if any(trained.glob(f"*{RECORD_SUFFIX}")):
        logger.info("%s holds this bundle's runs (it trained there beside a model it did not make): training goes on there", trained)
        return str(trained)
    if shipped.is_file() and not named_by_a_record(shipped):
        logger.warning(
            "%s was not made by this bundle (no fingerprint record of ours names it: e.g. a downloaded model); it is "
            "kept as it is. This bundle trains into %s (model.pt, source.pt, their fingerprints and run folders); "
            "evaluation and inference use %s/%s once it exists, %s until then",
            shipped, trained, trained, MODEL, shipped,
        )
        return str(trained)
    return str(models)


def model_file(ckpt_dir: str, models_dir: str) -> str:
    """The model evaluation and inference use: ``ckpt_dir/model.pt``, the bundle's own, when it exists;
    otherwise ``models_dir/model.pt`` when that exists (a downloaded model, before the bundle trained its own);
    otherwise ``ckpt_dir/model.pt`` (whose loader then names the missing file)."""
    own = Path(ckpt_dir) / MODEL
    shipped = Path(models_dir) / MODEL
    if not own.is_file() and shipped.is_file() and own.resolve() != shipped.resolve():
        logger.info("%s does not exist (this bundle has not trained a model here yet): using %s", own, shipped)
        return str(shipped)
    return str(own)
