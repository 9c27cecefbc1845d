"""Phantom generators: native layouts and formats, determinism, site differences, atomic writes, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from script_helpers import load_script

from transrisk_components.data import fets2021_datalist, iseg2019_datalist
from transrisk_components.data.phantom import fets as phantom_fets
from transrisk_components.data.phantom import make_phantom
from transrisk_components.reporting.phantom_preview import write_preview
from transrisk_components.data.phantom.anatomy import choose_grid
from transrisk_components.data.phantom.fets import make_fets_phantom
from transrisk_components.data.phantom.io import MARKER
from transrisk_components.data.phantom.iseg import make_iseg_phantom

SMALL = (16, 16, 16)


def _arrays(root: Path) -> dict[str, np.ndarray]:
    return {
        str(p.relative_to(root)): np.asarray(nib.load(p).dataobj)
        for p in sorted(root.rglob("*"))
        if p.name.endswith((".nii.gz", ".hdr"))
    }


def test_fets_partition_csv_real_format(data_fets_phantom):
    raw = (data_fets_phantom / "partitioning_1.csv").read_bytes()
    lines = raw.split(b"\r\n")
    assert lines[0] == b"Subject_ID,Partition_ID" and not raw.endswith(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert lines[1] == b"FeTS21_Training_001,01"
    second = (data_fets_phantom / "partitioning_2.csv").read_bytes().split(b"\r\n")[1:]
    assert {line.split(b",")[1] for line in second} == {b"01", b"02", b"03", b"04", b"05", b"06"}


def test_fets_images_and_labels(data_fets_phantom):
    case = fets2021_datalist(data_fets_phantom)[0]
    t1, t1ce, t2, flair = (np.asarray(nib.load(p).dataobj, np.float64) for p in case["image"])
    label_image = nib.load(case["label"])
    label = np.asarray(label_image.dataobj)
    assert label_image.shape == (32, 32, 32) and np.allclose(label_image.header.get_zooms(), 6.0)
    assert set(np.unique(label)) == {0, 1, 2, 4}
    assert np.all(t1[label == 0][t1[label == 0] > 0] > 0)  # skull-stripped: zero outside the brain only
    means = {name: {v: img[label == v].mean() for v in (1, 2, 4)} for name, img in
             (("t1", t1), ("t1ce", t1ce), ("t2", t2), ("flair", flair))}
    assert means["t1ce"][4] > 1.5 * means["t1ce"][1]  # enhancing rim bright on T1ce
    assert means["t1ce"][4] / means["t1ce"][2] > 1.5 * means["t1"][4] / means["t1"][2]  # ... on T1ce only
    assert means["flair"][2] > means["t1"][2] * means["flair"][1] / means["t1"][1]  # edema bright on FLAIR


def test_fets_institutions_differ(data_fets_phantom):
    cases = fets2021_datalist(data_fets_phantom, partition_csv="partitioning_1.csv")
    brain_means = {}
    for case in cases:
        t1 = np.asarray(nib.load(case["image"][0]).dataobj, np.float64)
        brain_means.setdefault(case["partition"], []).append(t1[t1 > 0].mean())
    site = {p: np.mean(v) for p, v in brain_means.items()}
    assert max(site.values()) > 1.3 * min(site.values())
    marker = json.loads((data_fets_phantom / MARKER).read_text())
    assert len({s["noise"] for s in marker["scanners"]}) == 3


def test_iseg_true_analyze_and_contrast(data_iseg_phantom):
    hdr = data_iseg_phantom / "subject-1-T1.hdr"
    image = nib.load(hdr)
    assert not isinstance(image, nib.Nifti1Pair) and isinstance(image, nib.AnalyzeImage)
    assert image.shape == (32, 32, 32, 1)
    assert b"ni1" not in hdr.read_bytes()[344:348]  # no NIfTI-pair magic
    t1, t2, label = (np.asarray(nib.load(data_iseg_phantom / f"subject-1-{k}.hdr").dataobj)[..., 0]
                     for k in ("T1", "T2", "label"))
    assert set(np.unique(label)) == {0, 10, 150, 250}
    ratio = {name: img[label == 250].mean() / img[label == 150].mean() for name, img in (("T1", t1), ("T2", t2))}
    assert abs(ratio["T1"] - 1) < abs(ratio["T2"] - 1)  # isointense T1, more contrast on T2


def test_deterministic(tmp_path):
    first = _arrays(make_fets_phantom(tmp_path / "a", subjects=2, seed=3, shape=SMALL, institutions=2))
    again = _arrays(make_fets_phantom(tmp_path / "b", subjects=2, seed=3, shape=SMALL, institutions=2))
    other = _arrays(make_fets_phantom(tmp_path / "c", subjects=2, seed=4, shape=SMALL, institutions=2))
    assert first.keys() == again.keys() and len(first) == 10
    assert all(first[k].tobytes() == again[k].tobytes() for k in first)
    assert any(first[k].tobytes() != other[k].tobytes() for k in first)
    iseg_a = _arrays(make_iseg_phantom(tmp_path / "a", subjects=2, seed=3, shape=SMALL, labelled=1))
    iseg_b = _arrays(make_iseg_phantom(tmp_path / "b", subjects=2, seed=3, shape=SMALL, labelled=1))
    assert len(iseg_a) == 5 and all(iseg_a[k].tobytes() == iseg_b[k].tobytes() for k in iseg_a)


def test_grids():
    assert choose_grid(None, True, (240, 240, 155), 192.0, (-1, -1, 1)).spacing == (1.0, 1.0, 1.0)
    default = choose_grid(None, False, (240, 240, 155), 192.0, (-1, -1, 1))
    assert default.shape == (64, 64, 64) and default.spacing == (3.0, 3.0, 3.0)
    np.testing.assert_allclose(default.affine[:3, :3], np.diag([-3.0, -3.0, 3.0]))
    with pytest.raises(ValueError, match="either shape or full_size"):
        choose_grid((32, 32, 32), True, (240, 240, 155), 192.0, (-1, -1, 1))


def test_atomic_and_overwrite_rules(tmp_path, monkeypatch):
    real = tmp_path / "MICCAI_FeTS2021_TrainingData"
    real.mkdir()
    with pytest.raises(FileExistsError, match="not a transrisk phantom"):
        make_fets_phantom(tmp_path, subjects=1, institutions=1, shape=SMALL)
    real.rmdir()

    calls = []
    original = phantom_fets.sample_tissues

    def killed_after_first(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(phantom_fets, "sample_tissues", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        make_fets_phantom(tmp_path, subjects=2, institutions=1, shape=SMALL)
    assert list(tmp_path.iterdir()) == []  # no dataset, no partial folder
    monkeypatch.undo()

    root = make_fets_phantom(tmp_path, subjects=1, institutions=1, shape=SMALL)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_fets_phantom(tmp_path, subjects=1, institutions=1, shape=SMALL, overwrite=False)
    assert make_fets_phantom(tmp_path, subjects=1, institutions=1, shape=SMALL, seed=1) == root
    assert [p.name for p in tmp_path.iterdir()] == [root.name]


def test_make_phantom_and_preview(tmp_path, data_fets_phantom):
    root = make_phantom("iseg", tmp_path, subjects=2, seed=0, shape=SMALL)
    assert len(iseg2019_datalist(root)) == 2
    assert write_preview(root, "iseg", tmp_path / "iseg.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = write_preview(data_fets_phantom, "fets", tmp_path / "fets.png", max_subjects=2)
    assert png.stat().st_size > 1000


def test_cli_script(tmp_path, capsys):
    load_script("make_phantom").main("fets", str(tmp_path), subjects=3, seed=0, shape=SMALL, institutions=2)
    assert "MICCAI_FeTS2021_TrainingData" in capsys.readouterr().out
    assert [c["partition"] for c in fets2021_datalist(
        tmp_path / "MICCAI_FeTS2021_TrainingData", partition_csv="partitioning_1.csv")] == ["01", "01", "02"]


def test_cli_full_size_flag(monkeypatch, tmp_path):
    """``--full-size`` (as the issue spells it) and ``--full_size`` both reach the generator."""
    import fire

    cli = load_script("make_phantom")

    seen = []
    monkeypatch.setattr(cli, "make_phantom", lambda *args, **kwargs: seen.append(kwargs) or tmp_path)
    for flag in ("--full-size", "--full_size"):
        fire.Fire(cli.main, command=["fets", "--out", str(tmp_path), flag])
    assert [k["full_size"] for k in seen] == [True, True] and all(k["shape"] is None for k in seen)


@pytest.mark.parametrize("arguments, message", [(["brats"], "unknown dataset 'brats'"),
                                                (["fets", "--subjects", "2", "--institutions", "3"], "institutions")])
def test_cli_names_a_bad_argument_in_one_line(tmp_path, arguments, message):
    """A typo on the command line ends with one line naming it, not a traceback, and writes nothing."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_phantom.py"
    done = subprocess.run([sys.executable, str(script), *arguments, "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and lines[0].startswith("make_phantom.py: "), done.stderr
    assert message in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.nii.gz"))
