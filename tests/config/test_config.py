from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
import yaml

from medseg.config import DEFAULTS, TaskConfig, available_tasks, flatten, load_config, parse_override
from medseg.config import registries
from medseg.engine.checks import check_task
from medseg.errors import MedsegError

from tests.conftest import REPO, synthetic_case


def test_liver_task_resolves_with_defaults_and_yaml_values():
    cfg = load_config("liver")
    assert isinstance(cfg, TaskConfig) and cfg.task == "liver"
    assert cfg.data.labels == {"background": 0, "liver": 1, "tumour": 2}
    assert cfg.evaluation.classes == {"liver": [1, 2], "tumour": [2]}
    assert cfg.preprocessing.window == {"level": 60, "width": 400}
    assert cfg.bundle_name() == "liver_ct_segmentation"
    # a value the YAML does not name comes from the schema's defaults
    assert cfg.training.seed == DEFAULTS["training"]["seed"] == 0
    assert cfg.augmentation.scale == [0.85, 1.15] and cfg.augmentation.rotate_prob == 0.5
    assert "liver" in available_tasks()
    # transition shim: the dict-style reads the consumers still use answer the same values
    assert cfg.training.epochs == cfg.training.epochs == 40
    assert cfg.data.get("nosuch", 7) == 7 and "labels" in cfg.data and "nosuch" not in cfg.data
    assert dict(cfg.bundle.items())["name"] == "liver_ct_segmentation" and {**cfg.data}["layout"] == "msd"


def test_overrides_are_typed_and_applied():
    cfg = load_config("liver", ["training.epochs=3", "training.learning_rate=1e-3", "network.channels=[8,16,32]",
                                "network.strides=[2,2]", "training.patch_size=[32,32,32]"])
    assert cfg.training.epochs == 3
    assert cfg.training.learning_rate == pytest.approx(1e-3) and isinstance(cfg.training.learning_rate, float)
    assert cfg.network.channels == [8, 16, 32]
    assert flatten(cfg)["training.epochs"] == "3" and flatten(cfg)["data.labels.tumour"] == "2"
    # a partial window mapping keeps the other half; a null network shorthand is the network's own default
    cfg = load_config("liver", ["preprocessing.window.level=50", "network.norm=null"])
    assert cfg.preprocessing.window == {"level": 50, "width": 400} and cfg.network.norm is None
    # the modality's defaults sit between the schema's and the YAML's
    assert load_config("liver", ["data.modality=MR"]).preprocessing.intensity == "zscore"


def test_set_parsing():
    assert parse_override("training.epochs=5") == ("training.epochs", {"training": {"epochs": 5}})
    assert parse_override(" a.b = [1, 2.5]") == ("a.b", {"a": {"b": [1, 2.5]}})
    assert parse_override("data.dataset=a=b") == ("data.dataset", {"data": {"dataset": "a=b"}})
    assert parse_override("network.args={prune_depth: 3}")[1] == {"network": {"args": {"prune_depth": 3}}}
    assert parse_override("data.sample=[unclosed")[1] == {"data": {"sample": "[unclosed"}}  # not YAML: a string
    with pytest.raises(MedsegError, match=r"--set training\.epochs: expected key=value"):
        parse_override("training.epochs")
    with pytest.raises(MedsegError, match=r"'training\.\.epochs' is not a dotted key"):
        parse_override("training..epochs=3")


def test_a_yaml_path_works_and_unknown_keys_are_named(tmp_path: Path):
    good = tmp_path / "mine.yaml"
    good.write_text("task: mine\ndata: {labels: {background: 0, organ: 1}}\n")
    mine = load_config(str(good))
    assert mine.data.labels == {"background": 0, "organ": 1}
    assert mine.bundle.name == "" and mine.bundle_name() == "mine_segmentation"  # derived, not written in
    bad = tmp_path / "typo.yaml"
    bad.write_text("task: mine\ntraining: {epoch: 3}\n")
    with pytest.raises(MedsegError, match=r"typo\.yaml: unknown key 'training\.epoch' \(known keys here: "
                                          r"accumulation_steps, .*, epochs, .*, weight_decay.*\)$"):
        load_config(str(bad))
    bad.write_text("task: mine\ntraining: {epochs: many}\n")
    with pytest.raises(MedsegError, match=r"^.*typo\.yaml: key 'training\.epochs' must be int, got 'many' \(str\)$"):
        load_config(str(bad))
    bad.write_text("data: {labels: {background: 0}}\n")
    with pytest.raises(MedsegError, match=r"typo\.yaml: key 'task' is missing: name the task"):
        load_config(str(bad))


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.epochs=many", r"^--set training\.epochs: key 'training\.epochs' must be int, got 'many' \(str\)$"),
        ("training.epochs=0", r"'training\.epochs' must be at least 1"),
        ("training.epochs=true", r"'training\.epochs' must be int, got True"),
        ("training.learning_rate=0", r"'training\.learning_rate' must be positive"),
        ("training.cache_rate=1.5", r"'training\.cache_rate' must be between 0 and 1"),
        ("training.warmup_epochs=40", r"'training\.warmup_epochs' must be less than training\.epochs"),
        ("training=3", r"key 'training' must be a mapping, got 3"),
        ("network.name=vnet", r"'network\.name' is 'vnet'; choose one of attention_unet, light_unet, resunet, swin_unetr,"
                              r" unet, unet3p, unetpp, unetr$"),
        ("training.loss=tversky", r"'training\.loss' is 'tversky'; choose one of ce, dice, dice_ce, dice_focal(, |$)"),
        ("data.layout=zip", r"'data\.layout' is 'zip'; choose one of csv, folders, msd, nnunet$"),
        ("data.modality=PET", r"'data\.modality' is 'PET'; choose one of CT, MR, XR, microscopy$"),
        ("training.patch_size=[64,a,96]", r"key 'training\.patch_size\[1\]' must be int, got 'a'"),
        ("preprocessing.spacing=[1,1]", r"needs 3 values"),
        ("evaluation.classes={liver: [7]}", r"evaluation\.classes\.liver' must list label values from data\.labels"),
        ("evaluation.keep_largest_component=[lung]", r"keep_largest_component' names unknown class 'lung'"),
        ("data.label_map={a: 1}", r"key 'data\.label_map\.a' must be int"),
        ("nosuch.key=1", r"^--set nosuch\.key: unknown key 'nosuch' \(known keys here: augmentation, bundle, data,"),
        ("training.epochs", r"expected key=value"),
    ],
)
def test_invalid_values_are_refused_with_the_key(override: str, message: str):
    with pytest.raises(MedsegError, match=message) as err:
        load_config("liver", [override])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.patch_size=[30,32,32]", r"liver\.yaml: key 'training\.patch_size' \[30, 32, 32\] must be multiples"
                                           r" of 16"),
        ("network.args={widht: 3}", r"network\.args\.widht: not an argument of network 'resunet'"),
        ("network.deep_supervision=true", r"network\.deep_supervision: network 'resunet' has no auxiliary outputs"),
    ],
)
def test_network_checks_run_through_check_task(override: str, message: str):
    cfg = load_config("liver", [override])  # the schema has nothing against it: only the network knows
    with pytest.raises(MedsegError, match=message):
        check_task(cfg)


def test_registries_are_the_single_source_of_names(monkeypatch):
    from medseg.engine.losses import build_loss
    from medseg.networks import REGISTRY

    assert list(REGISTRY) == registries.NETWORKS.names()
    for table in (registries.LOSSES, registries.OPTIMISERS, registries.SCHEDULES):
        for name in table:
            assert callable(table.resolve(name))  # each name has its builder where the table says
    # a name added to a table is accepted by the schema and built by the engine, with no second list to edit
    monkeypatch.setitem(registries.LOSSES.entries, "plain_dice", "medseg.engine.losses:dice_def")
    cfg = load_config("liver", ["training.loss=plain_dice"])
    assert type(build_loss(cfg.training)).__name__ == "DiceLoss"
    names = ", ".join(sorted(registries.LOSSES.names()))  # the choices listed are the table's, new name included
    assert "plain_dice" in names
    with pytest.raises(MedsegError, match=rf"'training\.loss' is 'tversky'; choose one of {names}$"):
        load_config("liver", ["training.loss=tversky"])
    monkeypatch.setitem(registries.WINDOW_PRESETS, "kidney", (30.0, 300.0))
    assert load_config("liver", ["preprocessing.window=kidney"]).preprocessing.window == "kidney"


def test_validation_does_not_modify_its_input():
    stored = load_config("liver", ["network.name=unetr", "network.args.feature_size=8"]).to_dict()
    stored["bundle"]["name"] = ""
    stored["network"]["args"] = {"feature_size": 8}
    before = copy.deepcopy(stored)
    cfg = TaskConfig.from_dict(stored, source="run/config.yaml")
    assert stored == before
    # the fixed input size comes from the patch in the model, not in the dict it was made from
    assert cfg.network.args == {"feature_size": 8, "img_size": [64, 96, 96]}
    assert cfg.bundle.name == "" and cfg.bundle_name() == "liver_segmentation"
    assert load_config("liver") == load_config("liver")  # nothing accumulates between loads


def test_fitted_section_from_fit_preprocessing_and_back_from_config_yaml(tmp_path: Path):
    from medseg.transforms import fit_preprocessing, preprocess_spec

    cases = []
    for i, spacing in enumerate(((0.8, 0.8, 2.0), (0.7, 0.7, 3.0), (1.0, 1.0, 5.0))):
        image, label, affine = synthetic_case(shape=(20, 18, 8), spacing=spacing, seed=i)
        nib.save(nib.Nifti1Image(image, affine), tmp_path / f"i{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), tmp_path / f"l{i}.nii.gz")
        cases.append({"image": str(tmp_path / f"i{i}.nii.gz"), "label": str(tmp_path / f"l{i}.nii.gz")})
    cfg = load_config("liver", ["preprocessing.spacing=auto", "data.modality=MR", "preprocessing.intensity=histogram"])
    before = cfg.to_dict()
    fitted = fit_preprocessing(cfg, cases)
    assert cfg.to_dict() == before and cfg.fitted.spacing is None  # the input config is left alone
    assert fitted.preprocessing == cfg.preprocessing  # what the user asked for stays as asked
    assert fitted.fitted.spacing == [0.8, 0.8, 3.0] and fitted.effective_spacing() == [0.8, 0.8, 3.0]
    assert fitted.fitted.image_channels == 1 and fitted.fitted.label_map == {}
    assert len(fitted.fitted.landmarks) == 11 and fitted.fitted.landmarks[0] == 0.0
    with pytest.raises(MedsegError, match="preprocessing.spacing: 'auto' is resolved from the training set"):
        cfg.effective_spacing()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(fitted.to_dict(), sort_keys=False))
    back = TaskConfig.from_dict(yaml.safe_load(path.read_text()), source=str(path))
    assert back == fitted and yaml.safe_load(path.read_text())["fitted"]["spacing"] == [0.8, 0.8, 3.0]
    spec = preprocess_spec(back, ("image",))
    assert next(s for s in spec if s["_target_"] == "ScaleSpacingd")["pixdim"] == [0.8, 0.8, 3.0]
    assert next(s for s in spec if s["_target_"] == "HistogramStandardized")["landmarks"] == fitted.fitted.landmarks


def test_old_run_folder_config_loads_and_stored_configs_are_checked():
    old = load_config("liver").to_dict()
    del old["fitted"]  # written before the fitted section: the fitted values sit in preprocessing
    del old["tracking"]["system_metrics"]  # nor did it know this key: it takes its default
    old["preprocessing"].update(spacing=[0.8, 0.8, 3.0], image_channels=1)
    old["preprocessing"]["histogram"]["landmarks"] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    cfg = TaskConfig.from_dict(old, source="runs/liver/x/config.yaml")
    assert cfg.effective_spacing() == [0.8, 0.8, 3.0] and cfg.effective_image_channels() == 1
    assert cfg.effective_landmarks()[-1] == 1.0 and cfg.fitted.spacing is None and cfg.tracking.system_metrics
    missing = copy.deepcopy(old)
    del missing["preprocessing"]["intensity"]  # any key an older medseg did not write takes today's default
    assert TaskConfig.from_dict(missing, source="medseg_task.json").preprocessing.intensity == "window"
    wrong = copy.deepcopy(old)
    wrong["training"]["epochs"] = "many"
    with pytest.raises(MedsegError, match=r"^medseg_task\.json: key 'training\.epochs' must be int, got 'many'"):
        TaskConfig.from_dict(wrong, source="medseg_task.json")
    extra = copy.deepcopy(old)
    extra["training"]["epochz"] = 3
    with pytest.raises(MedsegError, match=r"^medseg_task\.json: unknown key 'training\.epochz'"):
        TaskConfig.from_dict(extra, source="medseg_task.json")
    json_style = copy.deepcopy(old)
    json_style["data"]["label_map"] = {"255": 1}  # JSON object keys are strings
    assert TaskConfig.from_dict(json_style, source="medseg_task.json").effective_label_map() == {255: 1}


def test_config_yaml_of_an_older_medseg_takes_todays_defaults_for_keys_it_lacks(tmp_path: Path):
    stored = load_config("liver", ["training.epochs=7"]).to_dict()
    for section in ("inference", "interactive", "distill", "fitted"):  # sections an older medseg did not have
        del stored[section]
    del stored["tracking"]["system_metrics"], stored["bundle"]["int8"], stored["training"]["cache_dir"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(stored, sort_keys=False))
    cfg = TaskConfig.from_dict(yaml.safe_load(path.read_text()), source=str(path))
    today = TaskConfig.model_fields
    assert cfg.training.epochs == 7 and cfg.data.labels == load_config("liver").data.labels
    assert cfg.inference == today["inference"].get_default(call_default_factory=True)
    assert cfg.tracking.system_metrics == type(cfg.tracking).model_fields["system_metrics"].default
    assert cfg.bundle.int8 is type(cfg.bundle).model_fields["int8"].default
    assert cfg.training.cache_dir == "" and cfg.fitted.spacing is None
    stored["bundle"]["int9"] = True
    path.write_text(yaml.safe_dump(stored, sort_keys=False))
    with pytest.raises(MedsegError, match=rf"^{re.escape(str(path))}: unknown key 'bundle\.int9' \(known keys"):
        TaskConfig.from_dict(yaml.safe_load(path.read_text()), source=str(path))


def test_invalid_yaml_names_file_and_line(tmp_path: Path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("task: x\ntraining: [unclosed\n")
    with pytest.raises(MedsegError, match=r"broken\.yaml: line \d+ is not valid YAML"):
        load_config(str(bad))


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medseg.train", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_cli_unknown_task_is_one_line_exit_2():
    proc = _cli("kidney")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "medseg: error: unknown task 'kidney': available tasks are " + ", ".join(available_tasks())
        + "; or pass a path to a pipeline YAML"
    ]
    assert "Traceback" not in proc.stderr


def test_cli_invalid_key_and_debug_traceback():
    proc = _cli("liver", "--set", "training.epochz=2")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "unknown key 'training.epochz'" in proc.stderr
    debug = _cli("liver", "--set", "training.epochz=2", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_cli_missing_data_dir(tmp_path: Path):
    proc = _cli("liver", "--data-dir", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"medseg: error: --data-dir {tmp_path / 'nowhere'}: no such folder; give the"
                                   " folder holding the datasets, or a dataset folder")
    assert not (tmp_path / "run").exists()
