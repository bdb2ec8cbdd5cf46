"""What the receiver of a bundle and the researcher tracking runs meet after training: ``medseg.export`` never
destroys what sits at ``--out``, broken run files are one line, the bundle's metadata names what stock MONAI needs,
its ``inference.json`` refuses a missing or empty ``dataset_dir``, and the tracking side stays one line too."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from medseg.config import load_config
from medseg.errors import MedsegError
from medseg.export import main as export_main


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run folder with a real config and metrics; the checkpoint is never read by the refusals tested here."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = load_config("liver")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (run / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    metrics = {c: {"dice": 0.9, "hd95_mm": 3.0, "assd_mm": 1.0, "cases": 1} for c in ("liver", "tumour")}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "cases.json").write_text(json.dumps({
        "train": [{"case": "a", "image": "/d/lits_sample/imagesTr/a.nii.gz", "label": "/d/lits_sample/labelsTr/a.nii.gz"}],
        "val": [{"case": "b", "image": "/d/lits_sample/imagesTr/b.nii.gz", "label": "/d/lits_sample/labelsTr/b.nii.gz"}],
    }))
    return run


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- medseg.export --out never destroys anything
def test_export_out_onto_an_existing_file_is_refused_and_the_file_kept(run_dir, tmp_path, capsys):
    image = tmp_path / "scan.nii.gz"
    image.write_bytes(b"precious image bytes")
    assert export_main([str(run_dir), "--out", str(image)]) == 2
    assert "--out" in _one_line(capsys)
    assert image.is_file() and not image.is_symlink() and image.read_bytes() == b"precious image bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "scan.nii.gz"]  # no version folder, no lock


def test_export_out_onto_a_folder_that_is_not_a_bundle_leaves_it_in_place(run_dir, tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert export_main([str(run_dir), "--out", str(folder)]) == 2
    assert "not a MONAI bundle" in _one_line(capsys)
    assert (folder / "notes.txt").read_text() == "mine" and not (tmp_path / "results-v1").exists()


def test_export_out_under_a_file_is_one_line(run_dir, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert export_main([str(run_dir), "--out", str(tmp_path / "afile" / "sub" / "b")]) == 2
    assert "is a file" in _one_line(capsys)


def test_a_link_at_out_to_something_else_is_not_swapped(run_dir, tmp_path, capsys):
    other = tmp_path / "elsewhere"
    other.mkdir()
    (tmp_path / "b").symlink_to(other)
    assert export_main([str(run_dir), "--out", str(tmp_path / "b")]) == 2
    assert "a link to" in _one_line(capsys)
    assert (tmp_path / "b").resolve() == other.resolve()


@pytest.mark.parametrize("name,content,words", [
    ("metrics.json", "{broken", "not valid JSON"),
    ("config.yaml", "task: [liver\n", "not valid YAML"),
    ("run.json", '{"seconds": ', "not valid JSON"),
    ("metrics.json", json.dumps({"liver": {"dice": float("nan"), "hd95_mm": 1, "assd_mm": 1, "cases": 1}}),
     "no finite 'dice'"),
    ("metrics.json", json.dumps({"liver": {"dice": 0.9}}), "no finite 'hd95_mm'"),
])
def test_broken_run_files_are_one_line_naming_the_file(run_dir, tmp_path, capsys, name, content, words):
    (run_dir / name).write_text(content)
    assert export_main([str(run_dir), "--out", str(tmp_path / "b")]) == 2
    line = _one_line(capsys)
    assert str(run_dir / name) in line and words in line
    assert not (tmp_path / "b").exists()


def test_an_unreadable_checkpoint_is_one_line(run_dir, tmp_path, capsys):
    assert export_main([str(run_dir), "--out", str(tmp_path / "b")]) == 2
    line = _one_line(capsys)
    assert "best.pt" in line and "state dict" in line and "weights_only set to False" not in line


# ---------------------------------------------------------------- what the bundle tells stock MONAI
def test_metadata_names_the_packages_the_shipped_scripts_and_monai_bundle_run_need(tmp_path):
    from medseg.bundle.export import script_packages
    from medseg.bundle.scripts import write_scripts

    scripts = write_scripts(tmp_path)
    required, optional = script_packages(scripts)
    # scripts.medseg_inference imports PIL and scipy at load time, even for a CT bundle; SupervisedEvaluator: ignite
    assert {"pillow", "scipy", "nibabel", "pytorch-ignite"} <= {k.lower() for k in required}
    assert "scikit-image" not in required  # nothing in the bundle imports it
    assert {"pydicom", "connected-components-3d"} <= set(optional) and not set(optional) & set(required)
    assert all(v != "unknown" for v in required.values())


def test_optional_packages_are_not_under_monais_deprecated_key():
    """MONAI's parser renames ``optional_packages_version`` to ``required_packages_version``, over the real one."""
    source = (Path(__file__).parents[2] / "medseg" / "bundle" / "export.py").read_text()
    assert 'meta["optional_packages_version"]' not in source and "medseg_optional_packages_version" in source


def test_data_source_is_the_folder_the_run_trained_on(run_dir):
    from medseg.bundle.export import data_source

    cfg = load_config("liver")
    assert cfg.data.dataset == "Task03_Liver"
    assert data_source(cfg, run_dir) == "lits_sample"  # the sample stood in for the absent dataset
    (run_dir / "cases.json").write_text(json.dumps({"train": [{"image": "/d/Task03_Liver/imagesTr/a.nii.gz",
                                                                "label": "/d/Task03_Liver/labelsTr/a.nii.gz"}]}))
    assert data_source(cfg, run_dir) == "Task03_Liver"


def _datalist(tmp_path: Path, dataset_dir: Path, output_dir: Path):
    """inference.json's ``datalist`` resolved by MONAI's own parser against a scripts/ folder, as ``monai.bundle
    run`` resolves it."""
    from monai.bundle import ConfigParser

    from medseg.bundle.export import inference_config
    from medseg.bundle.scripts import write_scripts

    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    if not (bundle / "scripts").exists():
        write_scripts(bundle)
    config = inference_config(load_config("liver"))
    parser = ConfigParser(config)
    parser["dataset_dir"], parser["output_dir"] = str(dataset_dir), str(output_dir)
    sys.path.insert(0, str(bundle))
    try:
        for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            del sys.modules[name]
        return parser.get_parsed_content("datalist")
    finally:
        sys.path.remove(str(bundle))
        for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            del sys.modules[name]


@pytest.mark.parametrize("case", ["missing", "empty", "file"])
def test_stock_inference_refuses_a_dataset_dir_with_nothing_to_segment(tmp_path, case):
    target = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "file": tmp_path / "scan.nii.gz"}[case]
    if case == "empty":
        target.mkdir()
    if case == "file":
        target.write_bytes(b"x")
    with pytest.raises(Exception) as info:  # MONAI wraps the expression's error in a RuntimeError
        _datalist(tmp_path, target, tmp_path / "out")
    chain, err = [], info.value
    while err is not None:
        chain.append(err)
        err = err.__cause__ or err.__context__
    cause = next(e for e in chain if isinstance(e, FileNotFoundError))
    assert f"dataset_dir '{target}'" in str(cause) and "--dataset_dir FOLDER" in str(cause)


def test_stock_inference_into_its_input_folder_leaves_earlier_masks_out(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.nii.gz", "a_seg.nii.gz", "b.nrrd", "notes.txt"):
        (images / name).write_bytes(b"x")
    assert _datalist(tmp_path, images, images) == [str(images / "a.nii.gz"), str(images / "b.nrrd")]
    out = tmp_path / "out"  # another output folder: a file called *_seg is an input like any other
    out.mkdir()
    assert _datalist(tmp_path, images, out) == [str(images / n) for n in ("a.nii.gz", "a_seg.nii.gz", "b.nrrd")]


# ---------------------------------------------------------------- tracking
def test_an_unusable_tracking_store_is_one_line(tmp_path, monkeypatch):
    from medseg.tracking import Tracker

    not_a_db = tmp_path / "scan.nii.gz"
    not_a_db.write_bytes(b"\x1f\x8b" + b"\x00" * 200)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{not_a_db}")
    cfg = load_config("liver", ["tracking.system_metrics=false"])
    with pytest.raises(MedsegError) as info:
        Tracker(cfg, "liver-x", tmp_path)
    text = str(info.value)
    assert len(text.splitlines()) == 1 and "SELECT" not in text and "MLFLOW_TRACKING_URI" in text
    assert not_a_db.read_bytes() == b"\x1f\x8b" + b"\x00" * 200


def test_tracked_dataset_is_named_after_the_folder_it_came_from():
    from medseg.tracking import dataset_name

    cfg = load_config("liver")
    assert dataset_name(cfg, Path("/data/lits_sample")) == "lits_sample"
    assert dataset_name(cfg, Path("/data/Task03_Liver")) == "Task03_Liver"
    assert dataset_name(cfg) == "Task03_Liver"


def test_pyfunc_model_refuses_two_inputs_of_one_case_name(tmp_path):
    import pandas as pd

    from medseg.workflows.mlflow_model import BundleModel

    model = BundleModel()
    model.bundle, model.device = None, None  # never reached: the refusal comes before any prediction
    frame = pd.DataFrame({"image": [str(tmp_path / "x" / "a.nii.gz"), str(tmp_path / "a.nrrd")]})
    with pytest.raises(MedsegError, match="both case 'a'"):
        model.predict(SimpleNamespace(), frame, params={"output_dir": str(tmp_path / "out")})
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- what stock MONAI writes, and where
def _post(config: dict) -> list[dict]:
    return config["postprocessing"]["transforms"]


@pytest.mark.parametrize("label_map,orig,target,dtype", [
    ("{}", None, None, "$numpy.uint8"),
    ("{0: 0, 1: 1, 2: 2}", None, None, "$numpy.uint8"),  # the identity: nothing to map
    ("{128: 1, 255: 2}", [1, 2], [128, 255], "$numpy.uint8"),  # 0/128/255 label files
    ("{0: 0, 1: 1, 4: 2}", [2], [4], "$numpy.uint8"),  # BraTS-like gap: only the moved value
    ("{1000: 1, 2000: 2}", [1, 2], [1000, 2000], "$numpy.uint16"),  # past 255: uint16, as medseg.predict writes
])
def test_inference_json_maps_renumbered_labels_back_to_the_stored_values(label_map, orig, target, dtype):
    """A task that renumbered its label files' values (``data.label_map``) trains on 0..K-1; the bundle's stock-MONAI
    run writes the stored values back, as ``medseg.predict`` does (:func:`medseg.workflows.predict.stored_value_map`)."""
    import numpy as np
    import torch
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor

    from medseg.bundle.export import inference_config
    from medseg.workflows.predict import stored_value_map

    cfg = load_config("liver", [f"data.label_map={label_map}"])
    config = json.loads(json.dumps(inference_config(cfg)))  # as written to inference.json
    post = _post(config)
    assert post[-1]["_target_"] == "SaveImaged" and post[-1]["output_dtype"] == dtype
    mapping = [i for i, t in enumerate(post) if t["_target_"] == "MapLabelValued"]
    if orig is None:
        assert mapping == []
        return
    assert mapping == [len(post) - 2]  # after the inversion and the largest components, just before writing
    entry = post[-2]
    assert (entry["keys"], entry["orig_labels"], entry["target_labels"], entry["dtype"]) == ("pred", orig, target, dtype)
    # resolved by MONAI's parser, on labels 0..K-1: the values medseg.predict writes
    step = ConfigParser(config).get_parsed_content(f"postprocessing#transforms#{len(post) - 2}")
    labels = np.array([[[0, 1, 2, 2, 1, 0]]], dtype=np.uint8)
    out = step({"pred": MetaTensor(torch.from_numpy(labels), affine=torch.eye(4))})["pred"]
    stored = stored_value_map(SimpleNamespace(cfg=cfg))
    expected = np.vectorize(lambda v: stored.get(int(v), int(v)))(labels)
    assert isinstance(out, MetaTensor) and np.array_equal(out.numpy(), expected)
    assert out.numpy().dtype == (np.uint16 if dtype.endswith("uint16") else np.uint8)


def test_inference_json_writes_into_the_working_folder_not_the_bundle(tmp_path, monkeypatch):
    """Without ``--output_dir`` the masks go to ``eval/`` where the command runs (a deploy never writes into the
    bundle it runs); ``--output_dir`` (an override of ``output_dir``) still wins."""
    from monai.bundle import ConfigParser

    from medseg.bundle.export import _readme, inference_config

    bundle, work = tmp_path / "bundles" / "liver", tmp_path / "work"
    bundle.mkdir(parents=True)
    work.mkdir()
    monkeypatch.chdir(work)
    config = inference_config(load_config("liver"))
    parser = ConfigParser(config)
    parser["bundle_root"] = str(bundle)
    default = Path(parser.get_parsed_content("output_dir"))
    assert default == work / "eval" and bundle not in default.parents
    parser = ConfigParser(config)
    parser["bundle_root"], parser["output_dir"] = str(bundle), str(tmp_path / "out")  # what --output_dir does
    assert parser.get_parsed_content("output_dir") == str(tmp_path / "out")
    summary = {c: {"dice": 0.9, "hd95_mm": 3.0, "assd_mm": 1.0, "cases": 1} for c in ("liver", "tumour")}
    text = _readme(load_config("liver", ["data.label_map={128: 1, 255: 2}"]), summary, None)
    assert "Without `--output_dir` the masks go to `eval/` in the folder the command runs" in text
    assert "(0 = background, 128 = liver, 255 = tumour)" in text
    assert "(0 = background, 1 = liver, 2 = tumour)" in _readme(load_config("liver"), summary, None)


def test_a_run_is_named_from_its_runs_folder_never_by_its_absolute_path(tmp_path, monkeypatch):
    from medseg.bundle.export import run_name

    assert run_name(Path("/home/alice/site/runs/liver/20261203-204516")) == "runs/liver/20261203-204516"
    assert run_name(Path("/srv/runs/alice/medseg/runs/liver/x")) == "runs/liver/x"  # the innermost runs/
    assert run_name(Path("/scratch/alice/my_run")) == "my_run"  # --output-dir elsewhere: the folder's name
    assert run_name(Path("/home/alice/runs")) == "runs"
    run = tmp_path / "proj" / "runs" / "liver" / "20261203-204516"
    run.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "proj")
    assert run_name(Path("runs/liver/20261203-204516")) == run_name(run) == "runs/liver/20261203-204516"
    monkeypatch.chdir(run)
    assert run_name(Path(".")) == "runs/liver/20261203-204516"
    assert run_name(Path("../20261203-204516")) == "runs/liver/20261203-204516"


@pytest.fixture
def renumbered_run(tmp_path: Path) -> Path:
    """A finished run of a task whose label files store 0/128/255 (``data.label_map``), in a ``runs/`` folder under
    a user's home; seeded random weights (varied classes to compare, no training)."""
    import torch

    from medseg.networks import build_network
    from tests.conftest import FAST

    run = tmp_path / "home" / "alice" / "site" / "runs" / "liver" / "20261203-204516"
    (run / "checkpoints").mkdir(parents=True)
    cfg = load_config("liver", FAST + ["data.label_map={128: 1, 255: 2}", "tracking.enabled=false",
                                       f"data.dataset={tmp_path / 'home' / 'alice' / 'data' / 'LiTS'}",
                                       f"training.cache_dir={tmp_path / 'home' / 'alice' / 'cache'}"])
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    torch.manual_seed(3)
    torch.save(build_network(cfg.network, 1, 3).state_dict(), run / "checkpoints" / "best.pt")
    metrics = {c: {"dice": 0.5, "hd95_mm": 3.0, "assd_mm": 1.0, "cases": 1} for c in ("liver", "tumour")}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


@pytest.mark.slow
def test_stock_monai_writes_the_stored_values_outside_the_bundle_and_the_run_is_named_relatively(
        renumbered_run, tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    from medseg.bundle import versions
    from medseg.predict import main as predict_main
    from tests.conftest import synthetic_case
    from tests.workflows.test_train import stock_monai

    out = tmp_path / "bundles" / "renumbered"
    assert export_main([str(renumbered_run), "--out", str(out)]) == 0
    bundle = versions.resolve(out)
    text = (bundle / "configs" / "metadata.json").read_text()
    meta = json.loads(text)
    assert meta["medseg_export"]["run"] == "runs/liver/20261203-204516"
    assert "from run runs/liver/20261203-204516 (task 'liver')" in meta["changelog"]["0.1.0"]
    assert str(tmp_path) not in text and "alice" not in text  # neither the absolute path nor the user's name
    for path in [*(bundle / "configs").iterdir(), bundle / "docs" / "README.md"]:  # nor any other text file
        assert str(tmp_path) not in path.read_text() and "alice" not in path.read_text(), path.name
    task = json.loads((bundle / "configs" / "medseg_task.json").read_text())
    assert task["bundle"]["dir"] == "bundles" and task["data"]["dataset"] == "LiTS"
    assert task["training"]["cache_dir"] == "cache"
    assert [r["run"] for r in versions.list_bundles(out.parent)] == ["runs/liver/20261203-204516"]
    assert [t for t in _post(json.loads((bundle / "configs" / "inference.json").read_text()))
            if t["_target_"] == "MapLabelValued"][0]["target_labels"] == [128, 255]

    images, work = tmp_path / "images", tmp_path / "work"
    images.mkdir()
    work.mkdir()
    image, _, affine = synthetic_case(shape=(34, 30, 22), seed=11)
    nib.save(nib.Nifti1Image(image, affine), images / "scan.nii.gz")
    shipped = sorted(p.relative_to(bundle) for p in bundle.rglob("*") if "__pycache__" not in p.parts)
    # no --output_dir: the masks go to eval/ in the folder it runs in (medseg blocked: stock MONAI only)
    proc = stock_monai(work, "run", "--config_file", str(out / "configs" / "inference.json"),
                       "--bundle_root", str(out), "--dataset_dir", str(images))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.relative_to(bundle) for p in bundle.rglob("*") if "__pycache__" not in p.parts) == shipped
    theirs = np.asarray(nib.load(work / "eval" / "scan_seg.nii.gz").dataobj)
    assert theirs.dtype == np.uint8 and set(np.unique(theirs)) == {0, 128, 255}  # the stored values, all three
    assert predict_main(["--bundle", str(out), "--input", str(images), "--output", str(tmp_path / "medseg")]) == 0
    ours = np.asarray(nib.load(tmp_path / "medseg" / "scan_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(ours, theirs.reshape(ours.shape))  # the masks medseg.predict writes
