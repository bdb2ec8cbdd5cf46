"""medseg.plan: rule decisions on synthetic fingerprints, the measured step time with a real tiny network,
``auto`` keys beside hand-set ones, the planned YAML round trip, bad input, and a planned end-to-end run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from medseg.config import load_config
from medseg.errors import MedsegError
from medseg.plan import fingerprint, plan_dataset, rules, write_plan
from medseg.plan.auto import AutoFill
from medseg.plan.fingerprint import ras_geometry
from medseg.plan.timing import measure_step
from tests.conftest import FAST, REPO, write_msd


def fake_fp(shape, spacing, n=5, spacings=None, classes=None, dims=None, fg=(50.0, 200.0)):
    """A fingerprint as medseg.plan.fingerprint writes it, for ``n`` cases of ``shape`` at ``spacing``."""
    spacings = np.array(spacings if spacings is not None else [spacing] * n, dtype=float)
    med = np.median(spacings, axis=0)
    cases = [{"case": f"c{i}", "shape": list(shape), "spacing": list(s), "dims": len(shape)} for i, s in
             enumerate(spacings)]
    classes = classes or {"organ": {"value": 1, "median_share": 0.05, "median_components": 1.0,
                                    "intensity": {"p0.5": fg[0], "p50": 100.0, "p99.5": fg[1], "n": 100}}}
    return {"n_cases": len(cases), "dims": dims or len(shape), "median_spacing": med.tolist(),
            "spacing_p10": np.percentile(spacings, 10, axis=0).tolist(),
            "anisotropy": float(med.max() / med.min()), "cases": cases, "classes": classes, "modality": "CT",
            "foreground_intensity": [{"p0.5": fg[0], "p50": 100.0, "p99.5": fg[1], "mean": 110.0, "std": 30.0}]}


# ---- rules on synthetic fingerprints


def test_isotropic_keeps_median_spacing_and_plans_3d_with_even_strides():
    fp = fake_fp((160, 160, 120), (1.0, 1.0, 1.0))
    spacing = rules.target_spacing(fp)
    assert spacing.value == [1.0, 1.0, 1.0] and "median" in spacing.reason
    assert rules.dimensionality(fp, spacing.value).value == "3d"
    patch = rules.patch_size(fp, spacing.value, 64 * 96 * 96, 3).value
    assert np.prod(patch) <= 64 * 96 * 96 and len(set(patch)) == 1  # the same extent in mm on every axis
    topo = rules.topology(patch, spacing.value, "resunet", "cpu", {"strides": "strides", "channels": "channels"})
    assert all(isinstance(s, int) for s in topo.value["strides"])  # isotropic strides
    bottleneck = [p // 2 ** len(topo.value["strides"]) for p in patch]
    assert all(4 <= b <= 8 for b in bottleneck), bottleneck
    assert topo.value["channels"][0] == 16 and len(topo.value["channels"]) == len(topo.value["strides"]) + 1


def test_thick_slices_take_the_10th_percentile_and_anisotropic_strides():
    spacings = [(0.7, 0.7, 4.0), (0.7, 0.7, 5.0), (0.7, 0.7, 5.0), (0.7, 0.7, 5.0), (0.7, 0.7, 6.0)]
    fp = fake_fp((512, 512, 40), None, spacings=spacings)
    spacing = rules.target_spacing(fp)
    assert spacing.value[:2] == [0.7, 0.7]
    assert spacing.value[2] == pytest.approx(np.percentile([4, 5, 5, 5, 6], 10))  # 4.4, not the median 5
    assert "10th percentile" in spacing.reason
    mode = rules.dimensionality(fp, spacing.value)
    assert mode.value == "3d" and "anisotropic" in mode.reason  # 40*5/4.4 = 45 slices: enough for 3D
    patch = rules.patch_size(fp, spacing.value, 64 * 96 * 96, 3).value
    assert patch[2] < patch[0]  # fewer voxels along the coarse axis (same mm)
    topo = rules.topology(patch, spacing.value, "resunet", "cpu", {"strides": "strides"})
    first = topo.value["strides"][0]
    assert first == [2, 2, 1], topo.value  # the coarse axis waits until the others reach its spacing
    assert "anisotropic strides" in topo.reason


def test_few_thick_slices_plan_2d_slices():
    fp = fake_fp((512, 512, 12), (0.7, 0.7, 5.0))
    spacing = rules.target_spacing(fp).value
    mode = rules.dimensionality(fp, spacing)
    assert mode.value == "2d_slices" and "12 slices" in mode.reason
    assert rules.slice_axis(spacing) == 2


def test_2d_images_plan_2d():
    fp = fake_fp((512, 384), (1.0, 1.0))
    spacing = rules.target_spacing(fp).value
    assert spacing == [1.0, 1.0]
    assert rules.dimensionality(fp, spacing).value == "2d"
    patch = rules.patch_size(fp, spacing, 256 * 256, 2).value
    assert len(patch) == 2 and np.prod(patch) <= 256 * 256


def test_images_smaller_than_the_patch_budget_get_a_patch_capped_at_the_image():
    fp = fake_fp((40, 36, 28), (1.5, 1.5, 2.0))
    patch = rules.patch_size(fp, [1.5, 1.5, 2.0], 64 * 96 * 96, 3)
    assert all(p <= n for p, n in zip(patch.value, (40, 36, 28))), patch
    assert "capped" in patch.reason


def test_very_large_images_stay_within_the_voxel_budget_with_five_poolings():
    fp = fake_fp((1024, 1024, 600), (0.5, 0.5, 0.5))
    patch = rules.patch_size(fp, [0.5, 0.5, 0.5], 128 ** 3, 3).value
    assert patch == [128, 128, 128]
    strides = rules.pooling(patch, [0.5, 0.5, 0.5])
    assert len(strides) == rules.MAX_LEVELS
    assert [p // t for p, t in zip(patch, rules.total_stride(strides, 3))] == [4, 4, 4]


def test_tiny_and_huge_budgets_fit_the_schedule():
    tiny = rules.schedule(step_s=1.0, data_s=0.1, val_s=5.0, startup_s=10.0, budget_minutes=1.0)
    assert tiny.value["total_iterations"] < rules.MIN_ITERATIONS
    seconds = tiny.value["epochs"] * tiny.value["iterations_per_epoch"] * 1.1
    assert seconds <= 60.0 * (1 - rules.OVERHEAD) + 1e-6 or tiny.value["epochs"] == 1
    huge = rules.schedule(step_s=0.1, data_s=0.0, val_s=1.0, startup_s=10.0, budget_minutes=100_000)
    assert (huge.value["epochs"], huge.value["iterations_per_epoch"]) == (1000, 250)
    assert "capped" in huge.reason
    mid = rules.schedule(step_s=0.5, data_s=0.1, val_s=4.0, startup_s=20.0, budget_minutes=15)
    used = mid.value["epochs"] * mid.value["iterations_per_epoch"] * 0.6
    assert 0.6 * 900 < used <= 900 * (1 - rules.OVERHEAD)  # fills most of the budget, never more


def test_ct_window_from_foreground_percentiles_and_stacked_windows_for_far_apart_classes():
    fp = fake_fp((64, 64, 64), (1.0, 1.0, 1.0), fg=(-20.0, 240.0))
    one = rules.intensity(fp, "CT")
    assert one["preprocessing.window"].value == {"min": -20, "max": 240}
    classes = {"liver": {"value": 1, "median_share": 0.1, "median_components": 1,
                         "intensity": {"p0.5": 40.0, "p50": 100.0, "p99.5": 180.0, "n": 100}},
               "bone": {"value": 2, "median_share": 0.02, "median_components": 3,
                        "intensity": {"p0.5": 300.0, "p50": 700.0, "p99.5": 1400.0, "n": 100}}}
    fp2 = fake_fp((64, 64, 64), (1.0, 1.0, 1.0), classes=classes, fg=(40.0, 1400.0))
    stacked = rules.intensity(fp2, "CT")["preprocessing.window"]
    assert stacked.value == [{"min": 40, "max": 180}, {"min": 300, "max": 1400}]
    assert rules.intensity(fp, "MR")["preprocessing.intensity"].value == "zscore"
    assert rules.intensity(fp, "microscopy")["preprocessing.intensity"].value == "percentile"


def test_crop_ratio_and_post_processing_reasons():
    big = fake_fp((64, 64, 64), (1.0,) * 3, classes={"a": {"value": 1, "median_share": 0.3, "median_components": 1,
                                                         "intensity": {"n": 0}}})
    small = fake_fp((64, 64, 64), (1.0,) * 3, classes={"a": {"value": 1, "median_share": 0.0005,
                                                           "median_components": 4, "intensity": {"n": 0}}})
    assert rules.crop(big).value["pos_neg_ratio"] == 1.0
    assert rules.crop(small).value["pos_neg_ratio"] == 3.0
    post = rules.post_processing(big)
    assert post.value == [] and "after training" in post.reason
    assert post.reason.endswith("candidates with one component per case: a")


def test_a_class_inside_another_is_also_counted_in_the_whole_organ():
    def fp(borders):
        classes = {n: {"value": v, "median_share": 0.1, "median_components": 1, "intensity": {"n": 0},
                       "median_border": borders.get(n, {})} for n, v in (("liver", 1), ("tumour", 2), ("cyst", 3))}
        return {"labels": {"background": 0, "liver": 1, "tumour": 2, "cyst": 3}, "classes": classes}

    nested = rules.reported_classes(fp({"tumour": {"background": 0.1, "liver": 0.8, "cyst": 0.1},
                                        "cyst": {"tumour": 0.9, "liver": 0.1}}))
    assert nested.value == {"liver": [1, 2, 3], "tumour": [2, 3], "cyst": [3]}  # a cyst in a tumour in the liver
    assert "tumour lies inside liver (80% of its border" in nested.reason and "liver = labels 1+2+3" in nested.reason
    beside = rules.reported_classes(fp({"tumour": {"background": 0.5, "liver": 0.5}}))
    assert beside.value == {"liver": [1], "tumour": [2], "cyst": [3]} and "none lies inside" in beside.reason
    mutual = rules.reported_classes(fp({"tumour": {"liver": 0.9}, "liver": {"tumour": 0.9}}))
    assert mutual.value == {"liver": [1], "tumour": [2], "cyst": [3]}  # two halves of one region: no nesting


def test_ras_geometry_reorders_an_lps_affine():
    affine_lps = np.diag([-0.7, -0.7, 5.0, 1.0])  # RAS diag(0.7, 0.7, 5) written in LPS
    shape, spacing, code = ras_geometry((512, 400, 30), affine_lps)
    assert (shape, spacing, code) == ([512, 400, 30], [0.7, 0.7, 5.0], "RAS")


# ---- the measured step time (a real tiny network, no stubs)


def test_measured_step_time_runs_real_training_steps():
    cfg = load_config("liver", FAST)
    before = torch.get_rng_state()
    step = measure_step(cfg, torch.device("cpu"), steps=3)
    assert 0.0 < step.step_s < 60.0 and step.peak_bytes == 0.0 and step.amp == "none"
    # the median of the 3 timed steps (the warm-up steps are not among them), with the CPU time beside it
    assert len(step.samples) == 3 and step.step_s == sorted(step.samples)[1] and step.cpu_s > 0.0
    assert step.to_json()["warmup_steps"] == 2 and step.to_json()["samples_s"] == [round(s, 4) for s in step.samples]
    assert not torch.equal(before, torch.get_rng_state())  # random batches were drawn and stepped on


def test_bf16_is_judged_on_the_fastest_timed_steps_and_the_schedule_scales_fp32s_median(monkeypatch):
    from medseg.plan import planner
    from medseg.plan.timing import StepTime

    cfg = load_config("liver", FAST)
    fp32 = StepTime(1.0, samples=(1.0, 0.98, 1.05, 0.97, 1.1))
    # load arrived while bf16 was timed: its median is 4x fp32's, its fastest step 40% faster
    monkeypatch.setattr(planner, "measure_step", lambda *a, **k: StepTime(4.0, amp="bf16",
                                                                           samples=(0.58, 4.0, 6.0, 4.5, 3.0)))
    attempts: list = []
    decision, step = planner._amp(cfg, fp32, {"device": "cpu"}, attempts)
    assert decision.value == "bf16" and "0.580 s in bf16 against 0.970 s in fp32" in decision.reason
    assert step.step_s == pytest.approx(1.0 * 0.58 / 0.97) and attempts[0]["attempt"] == "bf16"
    # bf16 timed on a quiet machine, fp32 under load: bf16's own median is the lower estimate
    monkeypatch.setattr(planner, "measure_step", lambda *a, **k: StepTime(0.21, amp="bf16",
                                                                           samples=(0.2, 0.21, 0.22, 0.2, 0.23)))
    decision, step = planner._amp(cfg, StepTime(1.08, samples=(0.37, 1.08, 2.0, 3.0, 0.9)), {"device": "cpu"}, [])
    assert decision.value == "bf16" and step.step_s == 0.21
    # within 15% on the fastest steps: fp32 stays, with fp32's own measured step
    monkeypatch.setattr(planner, "measure_step", lambda *a, **k: StepTime(0.9, amp="bf16",
                                                                           samples=(0.9, 0.88, 0.92, 0.9, 0.95)))
    decision, step = planner._amp(cfg, fp32, {"device": "cpu"}, [])
    assert decision.value == "none" and "not >= 15% faster" in decision.reason and step is fp32


# ---- fingerprint, bad input, plan, auto keys, round trip


def _msd(tmp_path: Path, n=4, **kw) -> Path:
    return write_msd(tmp_path / "Syn", n_cases=n, **kw)


def test_fingerprint_has_geometry_classes_intensities_and_no_paths(tmp_path):
    root = _msd(tmp_path)
    from medseg.plan.planner import dataset_cases

    _, cases, labels = dataset_cases(root, None)
    fp = fingerprint(cases, labels, "CT")
    assert fp["median_spacing"] == [1.5, 1.5, 2.0] and fp["median_shape"] == [40, 36, 28]
    assert fp["cases"][0]["orientation"] == "RAS" and fp["channels"] == 1
    liver = fp["classes"]["liver"]
    assert liver["median_components"] == 1.0 and 0.05 < liver["median_share"] < 0.2
    assert 60 < liver["intensity"]["p50"] < 160  # synthetic liver ~N(110, 15) HU
    border = fp["classes"]["tumour"]["median_border"]  # the synthetic tumour sits inside the liver
    assert border["liver"] > 0.9 and border["background"] < 0.1 and liver["median_border"]["tumour"] < 0.5
    assert rules.reported_classes(fp).value == {"liver": [1, 2], "tumour": [2]}
    text = json.dumps(fp)
    assert str(tmp_path) not in text and [c["case"] for c in fp["cases"]] == [f"case_{i:03d}" for i in range(4)]


def _run_plan(args):
    from medseg.cli.plan import main

    return main(args)


@pytest.mark.parametrize("problem", ["one_case", "undeclared", "empty", "tiny", "channels", "dims"])
def test_bad_input_is_one_line_naming_the_cases(tmp_path, capsys, problem):
    args = []
    if problem == "one_case":
        root = _msd(tmp_path, n=1)
        expect = "1 labelled case(s) (case_000)"
    elif problem == "undeclared":
        root = _msd(tmp_path, n=3)
        args = ["--labels", "background=0,liver=1"]
        expect = "label values [2] in case_000, case_001, case_002 are not declared"
    elif problem == "tiny":
        root = _msd(tmp_path, n=3, shape=(6, 6, 6))
        expect = "images smaller than any sensible patch (8 voxels per axis): case_000 [6, 6, 6]"
    else:
        root = tmp_path / "csvset"
        (root / "i").mkdir(parents=True)
        rows = ["image,label"]
        for i in range(3):
            shape = (20, 20) if problem == "dims" and i == 1 else (20, 20, 12)
            img = np.zeros(shape, np.float32)
            lab = np.zeros(shape, np.uint8)
            if problem != "empty":
                lab[5:10, 5:10] = 1
            nib.save(nib.Nifti1Image(img, np.eye(4)), root / "i" / f"c{i}.nii.gz")
            nib.save(nib.Nifti1Image(lab, np.eye(4)), root / "i" / f"c{i}_seg.nii.gz")
            image = f"i/c{i}.nii.gz" + (f";i/c{i}.nii.gz" if problem == "channels" and i == 2 else "")
            rows.append(f"{image},i/c{i}_seg.nii.gz")
        (root / "cases.csv").write_text("\n".join(rows) + "\n")
        root = root / "cases.csv"
        expect = {"empty": "every label is empty (c0, c1, c2)",
                  "channels": "mixed channel counts: c2 have [2] image file(s), the others 1",
                  "dims": "mixed dimensionalities: c1 are [2]D, the others 3D"}[problem]
    before = sorted((p, p.stat().st_mtime_ns) for p in Path(root).parent.rglob("*") if p.is_file())
    assert _run_plan([str(root), "--modality", "CT", "--out", str(tmp_path / "out" / "x.yaml"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err
    assert sorted((p, p.stat().st_mtime_ns) for p in Path(root).parent.rglob("*") if p.is_file()) == before
    assert not (tmp_path / "out").exists()


def test_plan_hash_ignores_the_decision_measured_after_training():
    from medseg.plan.planner import AFTER_TRAINING, Decision, Plan

    plan = Plan("t", {"training.patch_size": Decision([32, 32, 32], "fits"),
                      "evaluation.keep_largest_component": Decision([], "measured after training")}, {}, {}, {}, 10.0)
    before = plan.hash
    plan.decisions["evaluation.keep_largest_component"] = Decision(["liver"], "raises Dice by 0.01")
    assert plan.hash == before and "evaluation.keep_largest_component" in AFTER_TRAINING
    plan.decisions["training.patch_size"] = Decision([32, 32, 16], "fits")
    assert plan.hash != before  # a planned value is part of it


@pytest.mark.slow
def test_planned_yaml_round_trip_and_auto_keys_beside_hand_set_ones(tmp_path):
    from medseg.workflows import train

    root = _msd(tmp_path)
    plan = plan_dataset(root, modality="CT", budget_minutes=30)
    out = write_plan(plan, tmp_path / "plans" / "syn.yaml")
    text = out.read_text()
    assert "median spacing of 4 cases" in text and "# balanced crops" in text
    cfg = load_config(str(out))
    for key in ("training.patch_size", "network.strides", "training.epochs", "preprocessing.window"):
        section, _, name = key.partition(".")
        assert cfg.to_dict()[section][name] == plan.decisions[key].value
    stored = json.loads(out.with_suffix(".plan.json").read_text())
    assert stored["hash"] == plan.hash
    assert stored["decisions"]["training.batch_size"]["value"] == cfg.training.batch_size in (2, 8)
    # the schedule is fitted to the step time measured here
    assert stored["machine"]["step_s"] > 0
    said = re.search(r"measured ([0-9.]+) s/step", stored["decisions"]["training.epochs"]["reason"])
    assert said and abs(float(said.group(1)) - stored["machine"]["step_s"]) <= 0.0006  # the reason rounds to 3 places
    # the kept step time is the median of 5 timed steps, recorded with every measured attempt
    kept = stored["machine"]["step"]
    assert len(kept["samples_s"]) == 5
    if stored["decisions"]["training.amp"]["value"] == "none":
        assert kept["step_s"] == sorted(kept["samples_s"])[2]
    assert stored["timing"] and all(len(t["samples_s"]) == 5 for t in stored["timing"])
    assert json.loads(out.with_suffix(".fingerprint.json").read_text())["n_cases"] == 4
    outcome = train.run(out, epochs=1, output_dir=tmp_path / "run", export=False,
                        overrides=["training.iterations_per_epoch=1", "tracking.enabled=false",
                                   "training.val_every=1", f"training.cache_dir={tmp_path / 'cache'}"])
    assert set(outcome.summary) == {"liver", "tumour"}
    # the deterministic preprocessing on disk: the validation case, and the training cases drawn
    assert len(list((tmp_path / "cache").glob("*/val/*.pt"))) == 1
    assert 1 <= len(list((tmp_path / "cache").glob("*/train/*.pt"))) <= 3

    # `auto` next to a hand-set key: the hand-set batch size and spacing stay, auto keys get planned values
    hand = tmp_path / "hand.yaml"
    hand.write_text(yaml.safe_dump({
        "task": "syn_auto", "data": {"layout": "msd", "dataset": str(root), "modality": "CT",
                                     "labels": {"background": 0, "liver": 1, "tumour": 2}},
        "preprocessing": {"spacing": [3.0, 3.0, 3.0], "window": "auto"},
        "training": {"patch_size": "auto", "batch_size": 3, "epochs": "auto", "iterations_per_epoch": "auto"},
        "network": {"channels": "auto", "strides": "auto"}}))
    fill = AutoFill(tmp_path, budget_minutes=30)
    auto = load_config(str(hand), ["training.val_every=1"], fill=fill)
    assert auto.training.batch_size == 3 and auto.preprocessing.spacing == [3.0, 3.0, 3.0]
    assert fill.plan.decisions["training.batch_size"].reason == "set by hand"
    assert auto.training.patch_size == fill.plan.decisions["training.patch_size"].value
    assert all(p <= n for p, n in zip(auto.training.patch_size, (20, 18, 19)))  # planned at the hand spacing
    assert isinstance(auto.preprocessing.window, dict) and auto.training.epochs >= 1
    assert auto.training.val_every == 1  # --set is a hand-set key too


@pytest.mark.slow
def test_train_dataset_dir_plans_and_trains(tmp_path, monkeypatch):
    from medseg.train import main

    root = _msd(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main([str(root), "--max-minutes", "0.75", "--output-dir", str(tmp_path / "run"), "--no-export"]) == 0
    run = tmp_path / "run"
    plan = json.loads((run / "plan.json").read_text())
    config_text = (run / "config.yaml").read_text()
    assert f"# plan {plan['hash']}" in config_text and "#   training.patch_size:" in config_text
    cfg = yaml.safe_load(config_text)
    assert cfg["training"]["patch_size"] == plan["decisions"]["training.patch_size"]["value"]
    assert "plan training.epochs:" in (run / "train.log").read_text()
    post = plan["decisions"]["evaluation.keep_largest_component"]
    assert post["reason"].startswith("measured on 1 validation case(s) after training")
    assert cfg["evaluation"]["keep_largest_component"] == post["value"]
    assert (tmp_path / "runs" / "plans" / "syn" / "syn.yaml").is_file()
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and runs[0].data.params["plan.hash"] == plan["hash"]


def _cached_cases(tmp_path: Path, cache_rate: float) -> tuple[list, Path, Any]:
    """Two synthetic cases and the liver config with a disk cache under ``tmp_path/cache`` at ``cache_rate``."""
    from medseg.data.case import Case
    from medseg.transforms import fit_preprocessing

    root = _msd(tmp_path, n=2)
    cases = [Case.of(root / "imagesTr" / f"case_{i:03d}.nii.gz", root / "labelsTr" / f"case_{i:03d}.nii.gz")
             for i in range(2)]
    cache = tmp_path / "cache"
    sets = [f"training.cache_dir={cache}", f"training.cache_rate={cache_rate}"]
    return cases, cache, fit_preprocessing(load_config("liver", FAST + sets), cases)


def test_persistent_preprocessing_cache_is_reused_and_invalidated(tmp_path):
    import os

    from medseg.engine.builders import preprocessing_key, validation_dataset

    cases, cache, cfg = _cached_cases(tmp_path, 0.0)
    first = validation_dataset(cases, cfg)[0]["image"]  # cache_rate 0: only what is read is stored
    folder = cache / preprocessing_key(cfg) / "val"
    entries = sorted(folder.glob("*.pt"))
    assert len(entries) == 1
    again = validation_dataset(cases, cfg)[0]["image"]  # a later run: read back, not recomputed
    assert sorted(folder.glob("*.pt")) == entries and torch.equal(first.as_tensor(), again.as_tensor())
    stat = os.stat(cases[0].image)
    os.utime(cases[0].image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a changed input file
    validation_dataset(cases, cfg)[0]
    assert len(list(folder.glob("*.pt"))) == 2
    other = cfg.model_copy(update={"preprocessing": cfg.preprocessing.model_copy(update={"window": "bone"})})
    assert preprocessing_key(other) != preprocessing_key(cfg)  # a changed plan: a new cache folder


def test_disk_cache_holds_the_cache_rate_share_in_memory(tmp_path):
    from medseg.engine.builders import preprocessing_key, training_dataset, validation_dataset
    from medseg.transforms import fit_preprocessing

    cases, cache, cfg = _cached_cases(tmp_path, 0.5)
    val = validation_dataset(cases, cfg)
    folder = cache / preprocessing_key(cfg) / "val"
    stored = list(folder.glob("*.pt"))
    assert val.cache_num == 1 and len(stored) == 1  # the in-memory half, stored on filling
    stored[0].unlink()
    val[0]  # from memory: its disk entry is not read (nor written again)
    assert not list(folder.glob("*.pt"))
    read = val[1]["image"]  # the other half: through the disk cache (stored on its first read)
    assert len(list(folder.glob("*.pt"))) == 1
    assert torch.equal(read.as_tensor(), val[1]["image"].as_tensor())
    plain = fit_preprocessing(load_config("liver", FAST), cases)
    reference = validation_dataset(cases, plain)  # the in-memory cache without a folder: the same volumes
    for i in range(2):
        assert torch.equal(reference[i]["image"].as_tensor(), val[i]["image"].as_tensor())
        assert torch.equal(reference[i]["image"].affine, val[i]["image"].affine)
    train = training_dataset(cases, cfg)  # the random tail still runs on every draw: patches of the patch size
    patch = train[0]
    patch = patch[0] if isinstance(patch, list) else patch
    assert list(patch["image"].shape[1:]) == list(cfg.training.patch_size)
    assert len(list((cache / preprocessing_key(cfg) / "train").glob("*.pt"))) == 1


@pytest.mark.slow
def test_2d_png_folder_plans_2d_with_the_255_mask_mapped(tmp_path):
    from PIL import Image

    root = tmp_path / "em"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :80]
    for i in range(4):
        mask = ((yy - 48 - i) ** 2 + (xx - 40) ** 2) < 400
        img = rng.normal(120, 20, (96, 80)) + 60 * mask
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "images" / f"s{i}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "labels" / f"s{i}.png")
    plan = plan_dataset(root, budget_minutes=5)
    d = plan.decisions
    assert d["network.spatial_dims"].value == 2 and d["network.slice_mode"].value is False
    assert d["network.spatial_dims"].reason == "the images are 2D" and len(d["training.patch_size"].value) == 2
    assert d["data.modality"].value == "microscopy" and d["preprocessing.intensity"].value == "percentile"
    assert plan.pipeline["data"]["label_map"] == {255: 1} and plan.fingerprint["labels"] == {"background": 0,
                                                                                             "label_1": 1}
    assert d["augmentation.rotate_deg"].value == 180.0 and d["augmentation.elastic.prob"].value == 0.3
    cfg = load_config(str(write_plan(plan, tmp_path / "em.yaml")))
    assert cfg.training.patch_size == d["training.patch_size"].value


def test_keep_largest_component_is_kept_only_where_it_raises_validation_dice(tmp_path):
    from medseg.data.case import Case
    from medseg.plan.post import decide_largest_component

    root = _msd(tmp_path, n=1)
    case = Case.of(root / "imagesTr" / "case_000.nii.gz", root / "labelsTr" / "case_000.nii.gz")
    ref = nib.load(case.label)
    pred = np.asarray(ref.dataobj).copy()
    pred[:3, :3, :3] = 1  # a false-positive island of liver, away from the organ
    (tmp_path / "pred").mkdir()
    nib.save(nib.Nifti1Image(pred, ref.affine), tmp_path / "pred" / "case_000.nii.gz")
    decision = decide_largest_component(load_config("liver"), [case], tmp_path / "pred")
    assert decision.value == ["liver"]  # tumour has one component already: unchanged, not kept
    assert "liver 0." in decision.reason and "-> 1.0000" in decision.reason


def test_a_pooling_level_fewer_rather_than_a_short_axis_cut_by_a_quarter():
    fp = fake_fp((60, 128, 128), (1.0, 1.0, 1.0))
    patch = rules.patch_size(fp, [1.0, 1.0], 256 * 256, 2, axes=[0, 1]).value
    assert patch == [48, 128]  # 32 (five poolings' multiple) would cut the 60-voxel axis to 32
    strides = rules.pooling(patch, [1.0, 1.0])
    assert len(strides) == 4 and all(p % 16 == 0 for p in patch)
    assert [p // t for p, t in zip(patch, rules.total_stride(strides, 2))] == [6, 8]


def test_nnunet_raw_layout_gives_labels_and_modality_from_its_dataset_json(tmp_path):
    from medseg.plan.planner import dataset_cases, manifest_modality

    root = tmp_path / "Dataset001_Syn"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    from tests.conftest import synthetic_case

    for i in range(3):
        image, label, affine = synthetic_case(seed=i)
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"syn_{i:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"syn_{i:03d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": 3, "file_ending": ".nii.gz"}))
    layout, cases, labels = dataset_cases(root, None)
    assert layout == "nnunet" and labels == {"background": 0, "liver": 1, "tumour": 2}
    assert manifest_modality(root) == "CT" and len(cases) == 3
    fp = fingerprint(cases, labels, "CT")
    assert set(fp["classes"]) == {"liver", "tumour"} and fp["dims"] == 3 and fp["anisotropy"] == 1.333  # rounded to 3 decimals


def test_a_short_cpu_budget_coarsens_the_fine_axes_before_the_patch_shrinks():
    iso = rules.coarser_spacing(rules.Decision([1.0, 1.0, 1.0], "median"), 120, 15)
    assert iso.value == [1.5, 1.5, 1.5] and "120 (< 400) iterations in 15 min" in iso.reason
    thick = rules.coarser_spacing(rules.Decision([0.7, 0.7, 5.0], "median"), 120, 15)
    assert thick.value == [1.05, 1.05, 5.0]  # the coarse axis stays


def test_an_attempt_timed_under_a_burst_of_load_is_timed_again_when_a_smaller_one_fits_far_more(tmp_path,
                                                                                                 monkeypatch):
    from medseg.plan import planner
    from medseg.plan.timing import StepTime

    calls = []

    def step(cfg, device, steps=5):  # the first two attempts timed while other jobs had the cores
        calls.append(list(cfg.training.patch_size))
        s = 30.0 if len(calls) <= 2 else 0.01
        return StepTime(s, amp=cfg.training.amp, samples=(s,) * steps)

    monkeypatch.setattr(planner, "measure_step", step)
    plan = plan_dataset(_msd(tmp_path), modality="CT", budget_minutes=15)
    first, second = plan.timing[0], plan.timing[1]
    assert first["step_s"] == second["step_s"] == 30.0 and plan.timing[2]["step_s"] == 0.01
    again = [t for t in plan.timing if str(t["attempt"]).endswith("timed again")]
    assert [t["attempt"] for t in again] == ["2 timed again", "1 timed again"]
    # the plan is the first attempt's: the median spacing and its patch, no halving note
    d = plan.decisions
    assert d["preprocessing.spacing"].value == plan.fingerprint["median_spacing"]
    assert d["training.patch_size"].value == first["patch"] == calls[0]
    assert "halved" not in d["training.patch_size"].reason
    assert plan.machine["step"]["step_s"] == 0.01
