"""``--tracking mlflow`` (MONAI's experiment tracking) on a bundle run, against a local MLflow store.

mlflow is an optional extra (``pip install "transrisk[mlflow]"``); without it this module is skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bundle_helpers import TINY, run_bundle
from monai.utils import path_to_sqlite_uri

mlflow = pytest.importorskip("mlflow", reason="mlflow is an optional extra: pip install 'transrisk[mlflow]'")

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "fets" / "configs"
TWO_EPOCHS = {**TINY, "max_epochs": 2}


def test_training_is_tracked_in_a_local_mlflow_store(tmp_path: Path, data_fets_phantom: Path) -> None:
    # MONAI's default store for --tracking mlflow: a local SQLite file under the bundle's output_dir (MLflow 3.13+
    # refuses the plain file store), artifacts beside it
    store = path_to_sqlite_uri(str(tmp_path / "eval" / "mlruns.db"))
    run_bundle(CONFIGS, "training", tmp_path, str(data_fets_phantom), TWO_EPOCHS, tracking="mlflow",
               experiment_name="transrisk_test")
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("transrisk_test")
    assert experiment is not None, f"no MLflow experiment in {store}"
    runs = client.search_runs([experiment.experiment_id])
    metrics = {key for run in runs for key in run.data.metrics}
    assert "val_mean_dice" in metrics, f"validation Dice not tracked; metrics: {sorted(metrics)}"
    assert any(run.data.params for run in runs), "the run's settings must be logged as parameters"
