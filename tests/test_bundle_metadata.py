"""Both bundles' metadata.json pass MONAI's verify_metadata offline and agree with the code's class names."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import sys
from pathlib import Path

import pytest

import transrisk_components
from transrisk_components.data.registry import get_dataset

pytest.importorskip("jsonschema", reason="monai.bundle verify_metadata needs jsonschema (setup.cfg test extras)")

from monai.bundle import verify_metadata  # noqa: E402
from monai.bundle.utils import DEPRECATED_ID_MAPPING  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:No hash value provided")

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
#: bundle folder -> (dataset registry name, name of the default target modality's input channel)
DEFAULTS = {"fets": ("fets", "FLAIR"), "iseg": ("iseg", "T2")}


def _metadata(bundle: str) -> dict:
    return json.loads((BUNDLES / bundle / "configs" / "metadata.json").read_text())


#: The schema the Model Zoo's bundles name; ``verify_metadata`` downloads it unless ``--filepath`` exists.
ZOO_SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
#: The copy inside each bundle that ``--filepath`` points at for an offline check.
OFFLINE_SCHEMA = "docs/meta_schema.json"


@pytest.mark.parametrize("bundle", sorted(DEFAULTS))
def test_verify_metadata_offline(bundle: str, monkeypatch: pytest.MonkeyPatch) -> None:
    root = BUNDLES / bundle
    metadata = _metadata(bundle)
    assert metadata["schema"] == ZOO_SCHEMA, f"{bundle}: metadata.json must name the official schema URL"
    # MONAI renames deprecated ids on load: optional_packages_version would replace required_packages_version
    assert not set(DEPRECATED_ID_MAPPING) & set(metadata), f"{bundle}: deprecated metadata ids"
    assert {"itk", "nibabel", "pytorch-ignite", "tensorboard"} <= set(metadata["required_packages_version"])
    schema = root / OFFLINE_SCHEMA
    assert schema.is_file(), f"{bundle}: the offline schema copy must ship inside the bundle"

    def no_network(*args, **kwargs):
        raise AssertionError(f"verify_metadata tried to download: {args} {kwargs}")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    verify_metadata(meta_file=str(root / "configs" / "metadata.json"), filepath=str(schema))


def test_bundles_ship_the_same_schema() -> None:
    texts = {b: (BUNDLES / b / OFFLINE_SCHEMA).read_text() for b in DEFAULTS}
    assert len(set(texts.values())) == 1


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda m: m.pop("network_data_format"), "network_data_format"),
        (lambda m: m["network_data_format"]["outputs"]["pred"].update(num_channels="4"), "is not of type 'integer'"),
        (lambda m: m.update(version="first"), "does not match"),
    ],
    ids=["no-network-data-format", "string-num-channels", "bad-version"],
)
def test_schema_rejects_broken_metadata(tmp_path: Path, damage, match: str) -> None:
    metadata = _metadata("fets")
    damage(metadata)
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=match):
        verify_metadata(meta_file=str(broken), filepath=str(BUNDLES / "fets" / "docs" / "meta_schema.json"))


@pytest.mark.parametrize("bundle", sorted(DEFAULTS))
def test_network_data_format_matches_the_dataset(bundle: str) -> None:
    dataset, modality = DEFAULTS[bundle]
    classes = get_dataset(dataset).tasks["multiclass"]
    formats = _metadata(bundle)["network_data_format"]
    image, pred = formats["inputs"]["image"], formats["outputs"]["pred"]
    assert image["channel_def"] == {"0": modality} and image["num_channels"] == 1
    assert pred["num_channels"] == len(pred["channel_def"]) == len(classes)
    assert [pred["channel_def"][str(k)] for k in range(len(classes))] == list(classes)


@pytest.mark.parametrize("bundle", sorted(DEFAULTS))
def test_bundle_documents_ship(bundle: str) -> None:
    root = BUNDLES / bundle
    readme = (root / "docs" / "README.md").read_text()
    sections = ("Model Overview", "Data", "Training configuration", "Input and output", "MONAI Bundle Commands",
                "Performance", "References", "License")
    for section in (f"## {name}" for name in sections):
        assert section in readme, f"{bundle}: README lacks {section}"
    assert "Apache License" in (root / "LICENSE").read_text()
    assert (root / "docs" / "data_license.txt").stat().st_size > 500


def test_one_version_for_the_package_and_both_bundles() -> None:
    """The package version is the bundles' version, ``setup.cfg`` reads it from the package, and the changelog's
    newest released entry is that version (the fingerprints record ``transrisk_components.__version__``). An
    ``Unreleased`` entry may stand above it: changes that leave every stage's computation as it was, kept at the
    version so that their outputs stay reusable (e.g. while a study's grid runs)."""
    version = transrisk_components.__version__
    for bundle in sorted(DEFAULTS):
        metadata = _metadata(bundle)
        assert metadata["version"] == version, f"{bundle}: metadata version {metadata['version']} != package {version}"
        assert version in metadata["changelog"], f"{bundle}: the metadata changelog lacks {version} (the Zoo's CI needs it)"
    assert re.search(r"^version = attr: transrisk_components.__version__$", (REPO / "setup.cfg").read_text(), re.M)
    headings = re.findall(r"^## (\S+)", (REPO / "CHANGELOG.md").read_text(encoding="utf-8"), re.M)
    released = headings[1:] if headings[:1] == ["Unreleased"] else headings
    assert released and released[0] == version, f"CHANGELOG.md's newest released entry is {released[:1]}, the version is {version}"


def _third_party_imports(package: Path) -> set[str]:
    """Top-level names of the non-standard-library modules that the files under ``package`` import."""
    names: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {package.name, "__future__"}


@pytest.mark.parametrize("bundle", sorted(DEFAULTS))
def test_required_packages_provide_every_import_of_the_code(bundle: str) -> None:
    """A Zoo user installs only what the metadata names (plus MONAI, torch and numpy by their own keys): every
    third-party module the package imports must come from one of those, and no name may be this project's own
    (``transrisk`` is not on the package index; the exported bundle carries the code inside it)."""
    metadata = _metadata(bundle)
    named = {re.sub(r"[-_.]+", "-", n).lower() for n in metadata["required_packages_version"]} | {"monai", "torch", "numpy"}
    assert not {n for n in named if n.startswith("transrisk")}, f"{bundle}: the package index has no transrisk"
    providers = importlib.metadata.packages_distributions()
    imports = _third_party_imports(REPO / "transrisk_components")
    assert {"monai", "torch", "ignite", "nibabel"} <= imports, imports  # the scan sees the real imports
    missing = {m: providers.get(m) for m in imports if not {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(m, [])} & named}
    assert not missing, f"{bundle}: metadata.json names no package providing {missing}"
