"""Intensity and spatial preprocessing: CT windows, MRI normalisations, auto spacing, inversion, bad input."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.bundle import ConfigParser
from monai.transforms import Compose, Invertd

from medseg.config import load_config
from medseg.errors import MedsegError
from medseg.transforms import build_eval_transforms, fit_preprocessing, input_channels, windows
from medseg import networks
from medseg.bundle.export import _bundle_spec, _write_scripts, inference_config, metadata
from medseg.transforms import pipeline
from medseg.transforms.bias import N4BiasFieldd
from medseg.transforms.intensity import HistogramStandardized, foreground_percentiles, learn_landmarks
from medseg.transforms.pipeline import _intensity_spec, instantiate, preprocess_spec
from medseg.transforms.settings import PRESETS

from tests.conftest import synthetic_case, write_msd


def _image(values, affine=None) -> dict:
    x = torch.as_tensor(values, dtype=torch.float32).reshape(1, -1, 1, 1)
    return {"image": MetaTensor(x, affine=torch.eye(4) if affine is None else affine)}


def _intensity(cfg, data):
    return Compose(instantiate(_intensity_spec(cfg)))(data)["image"]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_window_presets_map_the_window_edges_to_0_and_1_and_clip(preset):
    cfg = load_config("liver", [f"preprocessing.window={preset}"])
    level, width = PRESETS[preset]
    lo, hi = level - width / 2, level + width / 2
    out = _intensity(cfg, _image([lo, hi, level, lo - 500, hi + 500, lo + width / 4]))
    np.testing.assert_allclose(out.flatten().numpy(), [0.0, 1.0, 0.5, 0.0, 1.0, 0.25], atol=1e-6)


def test_liver_yaml_keeps_its_window_and_custom_min_max_windows():
    cfg = load_config("liver")
    assert windows(cfg) == [(-140.0, 260.0)] and input_channels(cfg) == 1
    out = _intensity(cfg, _image([-140.0, 260.0, 60.0, -1000.0]))
    np.testing.assert_allclose(out.flatten().numpy(), [0.0, 1.0, 0.5, 0.0], atol=1e-6)
    cfg = load_config("liver", ["preprocessing.window={min: -100, max: 300}"])
    np.testing.assert_allclose(_intensity(cfg, _image([-100.0, 300.0, 100.0])).flatten().numpy(), [0, 1, 0.5], atol=1e-6)


def test_several_windows_are_stacked_as_channels_and_set_the_network_input():
    cfg = load_config("liver", ["preprocessing.window=[liver, {level: 0, width: 2000}, {min: 0, max: 100}]"])
    assert input_channels(cfg) == 3
    out = _intensity(cfg, _image([-45.0, 105.0, 50.0]))
    assert out.shape[0] == 3
    np.testing.assert_allclose(out[0].flatten().numpy(), [0.0, 1.0, 95 / 150], atol=1e-6)
    np.testing.assert_allclose(out[1].flatten().numpy(), [0.4775, 0.5525, 0.525], atol=1e-6)
    np.testing.assert_allclose(out[2].flatten().numpy(), [0.0, 1.0, 0.5], atol=1e-6)
    assert "\"in_channels\": 3," in json.dumps(inference_config(cfg)["network_def"])


def test_zscore_gives_mean_0_and_std_1_in_its_region():
    rng = np.random.default_rng(0)
    x = np.zeros((1, 24, 24, 16), np.float32)
    x[0, 4:20, 4:20, 3:13] = rng.normal(300.0, 20.0, (16, 16, 10))  # "tissue", well above the background
    x[0, :4] = rng.normal(5.0, 2.0, (4, 24, 16))  # dim, non-zero background
    tissue = np.zeros(x.shape, bool)
    tissue[0, 4:20, 4:20, 3:13] = True
    for region, inside in (("image", np.ones(x.shape, bool)), ("nonzero", x != 0), ("mask", tissue)):
        cfg = load_config("liver", ["data.modality=MR", f"preprocessing.zscore.region={region}"])
        out = _intensity(cfg, {"image": MetaTensor(torch.from_numpy(x.copy()))}).numpy()
        assert abs(out[inside].mean()) < 1e-4 and abs(out[inside].std() - 1.0) < 2e-3, region


def test_histogram_standardisation_maps_each_image_onto_the_learned_landmarks():
    rng = np.random.default_rng(1)
    percentiles = [1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 99.0]
    images = [torch.from_numpy(np.concatenate([np.zeros(4000), rng.gamma(k, s, 20000)]).astype(np.float32))[None]
              for k, s in ((2.0, 100.0), (4.0, 30.0), (3.0, 300.0))]
    landmarks = learn_landmarks(images, percentiles)
    assert landmarks[0] == 0.0 and landmarks[-1] == 1.0 and np.all(np.diff(landmarks) > 0)
    t = HistogramStandardized(keys="image", percentiles=percentiles, landmarks=landmarks)
    for img in images:
        out = t({"image": img})["image"]
        # the foreground (above the mean) is defined on the input: the same voxels, mapped
        fg = out[img > img.mean()]
        np.testing.assert_allclose(np.percentile(fg.numpy(), percentiles), landmarks, atol=2e-3)
    # one image against the average of three: its own percentiles map exactly onto the landmarks
    src = foreground_percentiles(images[0][0], percentiles)
    mapped = t({"image": torch.tensor(src, dtype=torch.float32)[None]})["image"]
    assert mapped.shape == (1, len(percentiles))


def test_n4_bias_correction_flattens_a_smooth_field_and_caches_the_result(tmp_path):
    grid = np.meshgrid(*[np.linspace(-1, 1, 32)] * 3, indexing="ij")
    body = (grid[0] ** 2 + grid[1] ** 2 + grid[2] ** 2) < 0.7
    field = np.exp(0.4 * grid[0] + 0.2 * grid[1])
    x = (np.where(body, 100.0, 1.0) * field).astype(np.float32)[None]
    t = N4BiasFieldd(keys="image", shrink=2, iterations=[20, 20], cache_dir=str(tmp_path / "n4"))
    out = t({"image": MetaTensor(torch.from_numpy(x))})["image"].numpy()
    cv = lambda a: a[0][body].std() / a[0][body].mean()  # noqa: E731
    assert cv(out) < 0.5 * cv(x)
    assert len(list((tmp_path / "n4").glob("*.npy"))) == 1
    again = t({"image": MetaTensor(torch.from_numpy(x))})["image"].numpy()
    np.testing.assert_array_equal(again, out)


def test_percentile_scaling_for_2d_images():
    cfg = load_config("liver", ["data.modality=XR"])
    assert cfg.preprocessing.intensity == "percentile" and not cfg.preprocessing.crop_foreground
    x = torch.arange(1001, dtype=torch.float32).reshape(1, 1, 1001)
    out = _intensity(cfg, {"image": MetaTensor(x)})
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0
    np.testing.assert_allclose(float(out[0, 0, 500]), 0.5, atol=1e-3)


def test_a_yaml_naming_only_the_modality_gets_mri_defaults(tmp_path):
    yaml_path = tmp_path / "brain.yaml"
    yaml_path.write_text("task: brain\ndata: {modality: MR, labels: {background: 0, tumour: 1}}\n")
    cfg = load_config(str(yaml_path))
    assert cfg.preprocessing.intensity == "zscore" and cfg.augmentation.bias_field.prob > 0
    assert input_channels(cfg) == 1
    ct = load_config(str(yaml_path), ["data.modality=CT"])
    assert ct.preprocessing.intensity == "window" and ct.augmentation.bias_field.prob == 0


def test_spacing_auto_is_the_median_of_the_training_headers_in_ras_axis_order(tmp_path):
    cases = []
    for i, spacing in enumerate(((0.8, 0.8, 2.0), (0.7, 0.7, 3.0), (1.0, 1.0, 5.0))):
        image, label, affine = synthetic_case(shape=(20, 18, 8), spacing=spacing)
        if i == 2:  # stored with the axes permuted (z, y, x) and flipped: LPS-like storage
            image, label = image.transpose(2, 1, 0)[::-1], label.transpose(2, 1, 0)[::-1]
            affine = np.array([[0, 0, -1.0, 0], [0, -1.0, 0, 0], [-5.0, 0, 0, 0], [0, 0, 0, 1]])
        nib.save(nib.Nifti1Image(np.ascontiguousarray(image), affine), tmp_path / f"i{i}.nii.gz")
        nib.save(nib.Nifti1Image(np.ascontiguousarray(label), affine), tmp_path / f"l{i}.nii.gz")
        cases.append({"image": str(tmp_path / f"i{i}.nii.gz"), "label": str(tmp_path / f"l{i}.nii.gz")})
    cfg = load_config("liver", ["preprocessing.spacing=auto"])
    with pytest.raises(MedsegError, match="preprocessing.spacing: 'auto'"):
        build_eval_transforms(cfg)
    fitted = fit_preprocessing(cfg, cases)
    assert fitted.fitted.spacing == [0.8, 0.8, 3.0] and fitted.effective_spacing() == [0.8, 0.8, 3.0]
    assert fitted.preprocessing.spacing == "auto" and cfg.fitted.spacing is None  # the input config is left alone
    assert next(s for s in preprocess_spec(fitted) if s["_target_"] == "ScaleSpacingd")["pixdim"] == [0.8, 0.8, 3.0]


def test_inverse_restores_shape_spacing_and_affine_after_crop_and_padding(tmp_path):
    image, _, affine = synthetic_case(shape=(30, 26, 14), spacing=(0.9, 1.1, 2.5))
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # stored rotated: orientation undoes it
    affine[:3, :3] = rot @ affine[:3, :3]
    image = np.pad(image, 6, constant_values=-1000.0)  # air around the body: the foreground crop removes it
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, 6.0)
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "ct.nii.gz")
    for overrides, shape in ((["preprocessing.pad_to_multiple=true"], (32, 32, 32)),
                             (["data.modality=MR", "preprocessing.pad_to_multiple=true"], (16, 16, 16))):
        cfg = load_config("liver", overrides)
        chain = build_eval_transforms(cfg, with_label=False)
        data = chain({"image": str(tmp_path / "ct.nii.gz")})
        # oriented (axes swapped), resampled to 42x38x26 -> 31x23x43 voxels, cropped, then padded to 16s
        assert tuple(data["image"].shape[1:]) == shape
        ops = [op["class"] for op in data["image"].applied_operations]
        assert ops == ["Orientation", "ScaleSpacingd", "CropForeground", "DivisiblePad"]
        data["pred"] = MetaTensor(torch.ones_like(data["image"]), meta=data["image"].meta,
                                  applied_operations=data["image"].applied_operations)
        back = Invertd(keys="pred", transform=chain, orig_keys="image")(data)["pred"]
        assert tuple(back.shape[1:]) == image.shape
        np.testing.assert_allclose(back.affine.numpy(), affine, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(back.affine[:3, :3].numpy(), axis=0), [0.9, 1.1, 2.5], atol=1e-6)
        assert float(back[0, :3].max()) == 0.0  # the cropped-off air comes back as 0
    assert float(back[0, 20, 19, 13]) > 0.99  # the body centre comes back as 1


@pytest.mark.parametrize("modules", [pipeline.SCRIPT_MODULES, networks.SCRIPT_MODULES], ids=["transforms", "networks"])
def test_shipped_modules_import_only_monai_torch_and_their_shipped_siblings(modules):
    """What a bundle's scripts/ holds must run on stock MONAI: no medseg import, siblings by relative import."""
    stems = {m.__name__.rsplit(".", 1)[-1] for m in modules}
    for module in modules:
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                     if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
        siblings = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0}
        third_party = imported - set(sys.stdlib_module_names)
        assert third_party <= {"numpy", "torch", "monai", "scipy", "SimpleITK"}, module.__name__
        assert siblings <= stems and all(n.level == 1 for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                                         and n.level), module.__name__


def test_bundle_targets_name_the_shipped_package():
    cfg = load_config("liver", ["preprocessing.window=[liver, lung]"])
    spec = preprocess_spec(cfg)
    targets = [s["_target_"] for s in _bundle_spec(spec)]
    assert "scripts.medseg_transforms.StackWindowsd" in targets and "scripts.medseg_transforms.ScaleSpacingd" in targets
    assert spec[4]["windows"] == [[-45.0, 105.0], [-1350.0, 150.0]]


@pytest.mark.parametrize(
    "override, message",
    [
        ("preprocessing.window=livr", r"key 'preprocessing\.window' names unknown preset 'livr'; choose a preset "
                                      r"\(abdomen, bone, brain, liver, lung, mediastinum, soft_tissue\)"),
        ("preprocessing.window.width=0", r"key 'preprocessing\.window\.width' is 0; a window width must be > 0"),
        ("preprocessing.window=[lung, {min: 5, max: 5}]", r"preprocessing\.window\[1\]' has max 5 <= min 5"),
        ("augmentation.rotate_prob=1.5", r"key 'augmentation\.rotate_prob' is 1\.5; a probability must be between"),
        ("augmentation.elastic.prob=-0.1", r"key 'augmentation\.elastic\.prob' is -0\.1; a probability"),
        ("preprocessing.intensity=minmax", r"preprocessing\.intensity' is 'minmax'; choose one of histogram, none, "
                                           r"percentile, window, zscore"),
        ("augmentation.crop.mode=random", r"'training\.patch_size' is \[64, 96, 96\]; random crops .* powers of two"),
        ("augmentation.scale=[1.2,0.8]", r"'augmentation\.scale' is \[1\.2, 0\.8\]; give \[min, max\]"),
    ],
)
def test_bad_preprocessing_and_augmentation_values_name_the_key(override, message):
    with pytest.raises(MedsegError, match=message):
        load_config("liver", [override])


def test_cli_refuses_bad_input_with_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    from medseg.train import main

    write_msd(tmp_path / "data" / "Synthetic", n_cases=2)
    monkeypatch.chdir(tmp_path)
    base = ["liver", "--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "run"),
            "--set", "data.dataset=Synthetic", "--set", "tracking.enabled=false"]
    assert main(base + ["--set", "augmentation.crop.pad_to_patch=false"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "training.patch_size [64, 96, 96] is larger than the padded image [40, 36, 37]" in lines[0]
    assert main(base + ["--set", "preprocessing.window=brian"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "key 'preprocessing.window' names unknown preset 'brian'" in lines[0]


def test_bundle_preprocessing_with_stacked_windows_runs_from_its_scripts_folder(tmp_path, monkeypatch):

    image, _, affine = synthetic_case(shape=(24, 20, 10))
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "ct.nii.gz")
    cfg = load_config("liver", ["preprocessing.window=[liver, bone]"])
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    _write_scripts(bundle)
    shipped = {p.relative_to(bundle / "scripts").as_posix() for p in (bundle / "scripts").rglob("*.py")}
    assert {"medseg_transforms/intensity.py", "medseg_transforms/resample.py", "medseg_networks/unet.py"} <= shipped
    monkeypatch.syspath_prepend(str(bundle))
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        monkeypatch.delitem(sys.modules, name)
    parser = ConfigParser({"pre": {"_target_": "Compose", "transforms": _bundle_spec(preprocess_spec(cfg, ("image",)))}})
    chain = parser.get_parsed_content("pre")
    assert type(chain.transforms[4]).__module__ == "scripts.medseg_transforms.intensity"
    ours = build_eval_transforms(cfg, with_label=False)({"image": str(tmp_path / "ct.nii.gz")})["image"]
    theirs = chain({"image": str(tmp_path / "ct.nii.gz")})["image"]
    assert theirs.shape[0] == 2
    torch.testing.assert_close(theirs.as_tensor(), ours.as_tensor())
    meta = metadata(cfg, {})
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 2
    assert "CT windows [-45, 105], [-500, 1300] HU" in meta["image_classes"]
    mr = metadata(load_config("liver", ["data.modality=MR"]), {})
    assert mr["network_data_format"]["inputs"]["image"]["value_range"] == []
    # N4 in inference.json needs SimpleITK on the deploying machine: the metadata says so
    assert "SimpleITK" not in mr["required_packages_version"] and "SimpleITK" not in meta["required_packages_version"]
    n4 = metadata(load_config("liver", ["data.modality=MR", "preprocessing.bias_correction.enabled=true"]), {})
    assert n4["required_packages_version"]["SimpleITK"].split(".")[0] == "2"


def test_fit_counts_channel_files_and_learns_landmarks_into_the_spec(tmp_path):
    cases = []
    for i in range(2):
        image, label, affine = synthetic_case(shape=(20, 18, 10), seed=i)
        paths = []
        for c in range(2):  # two channel files per case, as nnU-Net's CASE_0000 / CASE_0001
            nib.save(nib.Nifti1Image(image + 100.0 * c + 1000.0, affine), tmp_path / f"c{i}_{c}.nii.gz")
            paths.append(str(tmp_path / f"c{i}_{c}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), tmp_path / f"l{i}.nii.gz")
        cases.append({"image": paths, "label": str(tmp_path / f"l{i}.nii.gz")})
    cfg = load_config("liver", ["preprocessing.window=[liver, lung]"])
    assert input_channels(cfg) == 2
    fitted = fit_preprocessing(cfg, cases)
    assert fitted.effective_image_channels() == 2 and input_channels(fitted) == 4
    with pytest.raises(MedsegError, match=r"have \[1, 2\] image files each"):
        fit_preprocessing(cfg, cases + [{"image": cases[0]["image"][0], "label": cases[0]["label"]}])
    hist = fit_preprocessing(load_config("liver", ["data.modality=MR", "preprocessing.intensity=histogram"]), cases)
    landmarks = hist.effective_landmarks()
    assert len(landmarks) == 11 and landmarks[0] == 0.0 and landmarks[-1] == 1.0
    entry = next(s for s in preprocess_spec(hist, ("image",)) if s["_target_"] == "HistogramStandardized")
    assert entry["landmarks"] == landmarks  # what the bundle's inference.json carries
