"""Shared fixtures: small synthetic CT volumes in the MSD layout, and the real LiTS sample (fetched once)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def synthetic_case(shape=(40, 36, 28), spacing=(1.5, 1.5, 2.0), seed=0, origin=(10.0, -20.0, 5.0)):
    """A CT-like volume in HU with an ellipsoid 'liver' (label 1) holding a spherical 'tumour' (label 2)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    centre = np.array(shape, dtype=np.float32)[:, None, None, None] / 2 + rng.uniform(-2, 2, (3, 1, 1, 1))
    radii = np.array(shape, dtype=np.float32)[:, None, None, None] * 0.3
    liver = (((grid - centre) / radii) ** 2).sum(0) <= 1.0
    tumour = (((grid - centre - 2.0) / 4.0) ** 2).sum(0) <= 1.0
    label = np.zeros(shape, np.uint8)
    label[liver] = 1
    label[liver & tumour] = 2
    image = rng.normal(-80.0, 20.0, shape).astype(np.float32)
    image[label == 1] = rng.normal(110.0, 15.0, int((label == 1).sum()))
    image[label == 2] = rng.normal(40.0, 15.0, int((label == 2).sum()))
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return image, label, affine


def write_msd(root: Path, n_cases: int = 3, **kwargs) -> Path:
    """Write an MSD-style dataset folder with ``n_cases`` synthetic cases; returns ``root``."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n_cases):
        image, label, affine = synthetic_case(seed=i, **kwargs)
        name = f"case_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    manifest = {"labels": {"0": "background", "1": "liver", "2": "tumour"}, "training": training}
    (root / "dataset.json").write_text(json.dumps(manifest))
    return root


def write_png_folder(root: Path, n: int = 4, shape=(40, 48), rgb: bool = False) -> Path:
    """A folders-layout 2D dataset: grey (or RGB) 8-bit PNG sections with thin dark membranes, 0/255 masks."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        mask = ((yy + 3 * i) % 12 < 3) | ((xx + 2 * i) % 10 < 2)
        image = np.clip(np.where(mask, 60, 190) + rng.normal(0, 15, shape), 0, 255).astype(np.uint8)
        if rgb:
            image = np.stack([image, image // 2, 255 - image], -1)
        Image.fromarray(image).save(root / "images" / f"sec{i:02d}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "labels" / f"sec{i:02d}.png")
    return root


#: Debian's chromium and chromium-driver for the browser tests; `make test` installs them where it can (root + apt)
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no chromium/chromedriver on PATH and make test could not install them (needs root and apt-get)",
)


@pytest.fixture
def msd_dataset(tmp_path: Path) -> Path:
    return write_msd(tmp_path / "Synthetic")


@pytest.fixture(scope="session")
def lits_sample(tmp_path_factory) -> Path:
    """The real built-in sample, prepared once per test session in a temporary data folder."""
    from medseg.data import prepare_lits_sample

    return prepare_lits_sample(tmp_path_factory.mktemp("data"))


# Tiny network and patches so a training run takes seconds on 2 CPU cores.
FAST = [
    "preprocessing.spacing=[3.0,3.0,3.0]",
    "training.patch_size=[16,16,16]",
    "network.channels=[4,8,16]",
    "network.strides=[2,2]",
    "network.num_res_units=1",
    "training.iterations_per_epoch=2",
    "training.batch_size=2",
    "training.val_every=1",
    "data.val_fraction=0.34",
    "training.num_workers=0",  # worker start-up would dominate these tiny runs
]


#: tests measured at over a second on 2 CPU cores (``pytest --durations``): subprocess CLIs, short trainings,
#: several processes, transformer exports. ``make test-fast`` leaves them out, as it does every ``slow`` test.
SLOW = (
    "tests/engine/test_engine_runs.py::",
    "tests/config/test_config.py::test_cli_",
    "tests/tracking/test_tracking.py::test_store_created_by_several_processes_at_once",
    "tests/tracking/test_tracking.py::test_deleted_experiment",
    "tests/tracking/test_tracking.py::test_system_metrics_switch",
    "tests/data/test_layouts.py::test_training_on_dicom_series_folders_keeps_patient_data_out",
    "tests/data/test_layouts.py::test_2d_folder_dataset_trains",
    "tests/data/test_dicom_io.py::test_oblique_reversed_series_matches_construction_sitk_and_monai",
    "tests/data/test_dicom_io.py::test_real_enhanced_ct_matches_simpleitk",
    "tests/inference/test_deploy.py::test_onnx_export_and_reload_every_family[swin_unetr",
    "tests/inference/test_deploy.py::test_onnx_export_and_reload_every_family[unetr",
    "tests/inference/test_deploy.py::test_onnx_export_and_reload_every_family[unetpp",
    "tests/networks/test_networks.py::test_export_round_trip_and_eval_determinism[unetr]",
    "tests/networks/test_networks.py::test_export_round_trip_and_eval_determinism[swin_unetr]",
    "tests/networks/test_networks.py::test_forward_backward_on_odd_sizes[swin_unetr",
    "tests/networks/test_networks.py::test_listing_command_counts_parameters_and_macs",
    "tests/workflows/test_train.py::test_train_workflow_runs_as_a_python_function",
    "tests/evaluation/test_evaluate.py::test_dicom_seg_reference_against_nifti_prediction",
)


def pytest_collection_modifyitems(items):
    """Tests on the ``trained`` fixture (a training run per module) and those in :data:`SLOW` are ``slow``."""
    for item in items:
        if "trained" in getattr(item, "fixturenames", ()) or item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short training run on synthetic cases (once per test module): run folder, MLflow store, bundle."""
    from medseg.train import main

    work = tmp_path_factory.mktemp("work")
    dataset = write_msd(work / "data" / "Synthetic")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.chdir(work)
    args = ["liver", "--epochs", "2", "--data-dir", str(work / "data"), "--output-dir", str(work / "run")]
    args += [a for o in FAST + ["data.dataset=Synthetic", f"bundle.dir={work / 'bundles'}"] for a in ("--set", o)]
    try:
        assert main(args) == 0
    finally:
        mp.undo()
    return {"work": work, "run": work / "run", "uri": uri, "dataset": dataset,
            "bundle": work / "bundles" / "liver_ct_segmentation"}


_EXIT: dict[str, int] = {}


def pytest_sessionfinish(session, exitstatus):
    _EXIT["status"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave without running C++ static destructors once the results are printed. SimpleITK's looped forever
    at exit in one full run (3 Dec; gdb: its exit handler walking a std::map), after the tests had used ITK from
    several threads (the uvicorn servers): CI would wait out its time limit on a suite that had passed."""
    if "status" in _EXIT:
        import os
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT["status"])
