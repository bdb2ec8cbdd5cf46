"""The command layer: `python -m medseg.<cmd>` modules are entry stubs over medseg.cli, whose bodies are
plain medseg.workflows functions (here: report and check, called from Python as a notebook would)."""

from __future__ import annotations

import importlib
import json

import nibabel as nib
import numpy as np
import pytest
import yaml
from PIL import Image

from medseg.config import load_config
from medseg.errors import MedsegError
from medseg.workflows import check, report

from tests.conftest import write_msd


@pytest.mark.parametrize("entry, cli", [
    ("medseg.data.__main__", "medseg.cli.data"), ("medseg.networks.__main__", "medseg.cli.networks"),
    ("medseg.preview", "medseg.cli.preview"), ("medseg.report", "medseg.cli.report"),
])
def test_entry_modules_run_the_cli_main(entry, cli):
    assert importlib.import_module(entry).main is importlib.import_module(cli).main


def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(load_config("liver").to_dict()))
    (run / "history.json").write_text(json.dumps({
        "epoch": [1, 2, 3], "loss": [1.0, 0.7, 0.5], "lr": [1e-3, 5e-4, 1e-4],
        "val_epoch": [1, 3], "val": {"val_dice_liver": [0.5, 0.8], "val_iou_liver": [0.4, 0.7]}}))
    metrics = {"liver": {"dice": 0.9, "dice_std": 0.01, "iou": 0.82, "hd95_mm": 3.25, "assd_mm": 1.5, "nsd": 0.95,
                         "cases": 2}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_report_run_writes_curves_and_the_metrics_table(tmp_path):
    run = _run_dir(tmp_path)
    written = report.run(run)
    assert [p.name for p in written] == ["training_curves.png", "report.md"]  # no cases.json: no overlays
    with Image.open(run / "training_curves.png") as img:
        assert img.size == (1500, 400)
    text = (run / "report.md").read_text()
    assert "| liver | 0.900 ± 0.010 | 0.820 | 3.25 | 1.50 | 0.950 | 2 |" in text
    assert "![training_curves](training_curves.png)" in text
    (run / "metrics.json").unlink()
    with pytest.raises(MedsegError, match=r"metrics\.json: missing; the run did not finish"):
        report.run(run)
    with pytest.raises(MedsegError, match="not a medseg run directory"):
        report.run(tmp_path)


def test_check_run_lists_the_bad_case_and_writes_the_json(tmp_path):
    root = write_msd(tmp_path / "Task", n_cases=3, shape=(16, 14, 10))
    label = root / "labelsTr" / "case_001.nii.gz"
    img = nib.load(label)
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 7  # a value the dataset.json does not declare
    nib.save(nib.Nifti1Image(data, img.affine), label)
    dataset = check.open_dataset(root)
    seen = []
    result = check.run(dataset, on_case=lambda r: seen.append(r.case))
    assert dataset.layout == "msd" and seen == ["case_000", "case_001", "case_002"]
    assert result.bad == ["case_001"] and "7" in " ".join(result.results[1].problems)
    out = check.write_json(result, tmp_path / "report.json")
    stored = json.loads(out.read_text())
    assert stored["bad_cases"] == ["case_001"] and stored["cases"][0]["shape"] == [16, 14, 10]


def test_check_maps_0_255_png_masks_on_reading(tmp_path):
    root = tmp_path / "pngs"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(root / "images" / f"c{i}.png")
        mask = np.zeros((20, 24), np.uint8)
        mask[5:12, 6:15] = 255
        Image.fromarray(mask).save(root / "labels" / f"c{i}.png")
    dataset = check.open_dataset(root)
    assert dataset.layout == "folders" and dataset.label_map == {255: 1}
    result = check.run(dataset)
    assert result.bad == [] and "label values mapped on reading: {255: 1}" in result.summary
