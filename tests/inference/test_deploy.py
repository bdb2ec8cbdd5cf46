"""Fast deployment: ONNX export of every network family, the onnxruntime/openvino engines against torch, missing
runtimes, INT8 quantisation (and its refusal), distillation."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.bundle.onnx import STATIC_SPATIAL, check_onnx, export_onnx
from medseg.evaluation.classes import class_dice
from medseg.inference.runtimes import INT8_FILE, build_engine
from medseg.networks import build_network
from medseg.predict import main as predict_main

from tests.conftest import synthetic_case

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None

#: small settings of every registry family
SMALL = {
    "unet": {"channels": [4, 8, 16]},
    "resunet": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
    "attention_unet": {"channels": [4, 8, 16], "strides": [2, 2]},
    "unetpp": {"channels": [4, 4, 8, 8, 16]},
    "unet3p": {"channels": [4, 8, 16]},
    "unetr": {"args": {"feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 2}},
    "swin_unetr": {"args": {"feature_size": 12}},
    "light_unet": {"channels": [4, 8, 16]},
}


def small_network(name: str, dims: int, patch: int) -> torch.nn.Module:
    extra = SMALL[name]
    args = dict(extra.get("args", {}))
    if name == "unetr":
        args["img_size"] = [patch] * dims
    net_cfg = {"name": name, "spatial_dims": dims, "args": args, **{k: v for k, v in extra.items() if k != "args"}}
    torch.manual_seed(0)
    return build_network(net_cfg, 1, 3).eval()


FAMILIES = [pytest.param(name, dims, marks=[pytest.mark.slow] if (name, dims) == ("swin_unetr", 3) else [],
                         id=f"{name}-{dims}d") for dims in (2, 3) for name in SMALL]


@pytest.mark.parametrize("name,dims", FAMILIES)
def test_onnx_export_and_reload_every_family(name: str, dims: int, tmp_path: Path) -> None:
    patch = 64 if name == "swin_unetr" else 32
    net = small_network(name, dims, patch)
    path = tmp_path / "model.onnx"
    export_onnx(net, path, [patch] * dims, 1, dynamic=name not in STATIC_SPATIAL)
    assert check_onnx(net, path, [patch] * dims, 1) < 1e-4
    # reloaded through the engine: inside the network's padding, so a size that is no multiple works where the
    # graph is dynamic (a fixed-size graph gets the patch)
    engine = build_engine("onnxruntime", net, tmp_path)
    size = [patch] * dims if name in STATIC_SPATIAL else [patch + 5] + [patch - 3] * (dims - 1)
    x = torch.randn(3, 1, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = net(x), engine.forward(x)
    assert out.shape == ref.shape == (3, 3, *size)
    assert float((out - ref).abs().max()) < 1e-4


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed (pip install openvino)")
def test_openvino_compiles_once_per_input_shape_and_keeps_the_torch_logits(tmp_path: Path) -> None:
    net = small_network("resunet", 3, 16)
    export_onnx(net, tmp_path / "model.onnx", [16, 16, 16], 1)
    forward = build_engine("openvino", net, tmp_path).forward
    session = getattr(forward, "net", forward)  # the runtime inside the network's size padding
    cache = session.run
    cache.keep = 2
    shapes = [(2, 1, 16, 16, 16), (1, 1, 16, 16, 16), (2, 1, 16, 16, 16), (1, 1, 32, 16, 16)]
    for i, shape in enumerate(shapes):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            ref, out = net(x), session(x)
        assert out.shape == ref.shape and float((out - ref).abs().max()) < 1e-4, shape
    # the model is compiled for each shape seen, at most ``keep`` of them, the least recently used dropped
    assert list(cache.compiled) == [(2, 1, 16, 16, 16), (1, 1, 32, 16, 16)]
    assert [tuple(c.input(0).shape) for c in cache.compiled.values()] == list(cache.compiled)

    class Unreshapable:  # a graph that fixes a size: OpenVINO's reshape raises RuntimeError
        def clone(self):
            return self

        def reshape(self, shape):
            raise RuntimeError("cannot reshape")

    cache.model = Unreshapable()
    x = torch.randn(1, 1, 16, 32, 16, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref, out = net(x), session(x)
    assert float((out - ref).abs().max()) < 1e-4 and cache.compiled[(1, 1, 16, 32, 16)] is cache.dynamic


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed (pip install openvino)")
def test_openvino_compiles_the_sliding_windows_shape_at_load(tmp_path: Path) -> None:
    """With the sliding window's input shape (``window_input`` of the chain), OpenVINO compiles that shape (after
    the network's size padding) at load and no dynamic model; a shape the graph cannot take compiles the dynamic
    model when first needed. Logits stay torch's."""
    from types import SimpleNamespace

    from monai.inferers import SlidingWindowInferer

    from medseg.inference.runtimes import window_input

    chain = SimpleNamespace(inferer=SlidingWindowInferer(roi_size=[12, 16, 16], sw_batch_size=2), in_channels=1)
    assert window_input(chain) == (2, 1, 12, 16, 16)
    assert window_input(SimpleNamespace(inferer=SlidingWindowInferer(roi_size=[-1, 16, 16]), in_channels=1)) is None
    assert window_input(SimpleNamespace(inferer=chain.inferer, in_channels=None)) is None
    net = small_network("resunet", 3, 16)
    export_onnx(net, tmp_path / "model.onnx", [16, 16, 16], 1)
    forward = build_engine("openvino", net, tmp_path, window=window_input(chain)).forward
    session = getattr(forward, "net", forward)
    cache = session.run
    padded = (2, 1, *net._target([12, 16, 16]))
    assert list(cache.compiled) == [padded] and cache.dynamic is None
    first = cache.compiled[padded]
    x = torch.randn(2, 1, 12, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref, out = net(x), forward(x)
    assert out.shape == ref.shape and float((out - ref).abs().max()) < 1e-4
    assert cache.compiled[padded] is first and len(cache.compiled) == 1  # the load's compile ran it

    class Unreshapable:  # a graph that fixes a size: OpenVINO's reshape raises RuntimeError
        def __init__(self, model):
            self.model = model

        def clone(self):
            return self

        def reshape(self, shape):
            raise RuntimeError("cannot reshape")

    real, core = cache.model, cache.core
    cache.model = Unreshapable(real)
    cache.core = SimpleNamespace(compile_model=lambda model, *a: core.compile_model(
        real if isinstance(model, Unreshapable) else model, *a))
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref, out = net(x), session(x)
    assert cache.dynamic is not None and cache.compiled[(1, 1, 16, 16, 16)] is cache.dynamic
    assert float((out - ref).abs().max()) < 1e-4


@pytest.fixture(scope="module")
def random_bundle(trained, tmp_path_factory) -> Path:
    """The trained bundle with seeded random weights (varied classes to compare), its ONNX re-exported."""
    folder = tmp_path_factory.mktemp("deploy") / "bundle"
    shutil.copytree(trained["bundle"].resolve(), folder)
    cfg = json.loads((folder / "configs" / "medseg_task.json").read_text())
    torch.manual_seed(3)
    net = build_network(cfg["network"], 1, 3).eval()
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    export_onnx(net, folder / "models" / "model.onnx", cfg["training"]["patch_size"], 1)
    return folder


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("volume")
    image, _, affine = synthetic_case(shape=(40, 36, 28), seed=21)
    nib.save(nib.Nifti1Image(image, affine), folder / "case.nii.gz")
    return folder / "case.nii.gz"


def _predict(bundle: Path, image: Path, out: Path, *extra: str) -> np.ndarray:
    assert predict_main(["--bundle", str(bundle), "--input", str(image), "--output", str(out), "--device", "cpu",
                         *extra]) == 0
    return np.asarray(nib.load(out / "case_seg.nii.gz").dataobj)


def test_bundle_holds_a_checked_onnx_model(trained) -> None:
    bundle = trained["bundle"]
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())["medseg_onnx"]
    assert (bundle / meta["file"]).is_file() and meta["dynamic_spatial"] is True
    assert 0 <= meta["max_abs_diff"] < 1e-3 and meta["checked_patch"] == [16, 16, 16]
    # the sizes the bare graph takes (model.ts and medseg's engines pad to them): a multiple of the strides' product
    assert meta["spatial_multiple"] == 4 and meta["spatial_minimum"] == 0 and meta["spatial_size"] is None
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle / meta["file"]), providers=["CPUExecutionProvider"])
    size = [meta["spatial_multiple"] * k for k in (3, 5, 7)]
    out = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 1, *size), np.float32)})[0]
    assert list(out.shape) == [1, 3, *size]


@pytest.mark.parametrize("engine", ["onnxruntime"] + [pytest.param(e, marks=pytest.mark.skipif(
    not HAS_OPENVINO, reason="openvino not installed (pip install openvino)")) for e in ("openvino", "openvino-bf16")])
def test_engine_gives_the_torch_masks(random_bundle: Path, volume: Path, engine: str, tmp_path: Path) -> None:
    ref = _predict(random_bundle, volume, tmp_path / "torch")
    out = _predict(random_bundle, volume, tmp_path / engine, "--engine", engine)
    assert out.shape == ref.shape == (40, 36, 28)
    assert len(np.unique(ref)) == 3  # random weights: all three classes present, so the comparison can fail
    # bfloat16 keeps 8 bits of mantissa: random weights give near-tied logits, some of which flip (the trained
    # liver bundle's masks against torch's are in benchmarks/bench_deploy.py)
    limit = 0.97 if engine.endswith("bf16") else 0.99
    for label in (0, 1, 2):
        assert class_dice(ref, out, [label]) >= limit, (engine, label)


def test_engine_without_its_package_gives_one_line(random_bundle: Path, volume: Path, tmp_path: Path, capsys,
                                                    monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    code = predict_main(["--bundle", str(random_bundle), "--input", str(volume), "--output", str(tmp_path / "o"),
                         "--engine", "onnxruntime"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "onnxruntime package is not installed" in err[0] and "pip install onnxruntime" in err[0]
    assert not (tmp_path / "o" / "case_seg.nii.gz").exists()


def test_engine_that_cannot_load_the_model_gives_one_line(random_bundle: Path, volume: Path, tmp_path: Path,
                                                         capsys) -> None:
    broken = tmp_path / "bundle"
    shutil.copytree(random_bundle, broken)
    (broken / "models" / "model.onnx").write_bytes(b"not an onnx model")
    code = predict_main(["--bundle", str(broken), "--input", str(volume), "--output", str(tmp_path / "o"),
                         "--engine", "onnxruntime"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model.onnx: onnxruntime cannot load it" in err[0]
    (broken / "models" / "model.onnx").unlink()
    code = predict_main(["--bundle", str(broken), "--input", str(volume), "--output", str(tmp_path / "o"),
                         "--engine", "onnxruntime"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model.onnx: missing" in err[0]


def _run_copy(trained, folder: Path, **bundle: object) -> Path:
    """The trained run folder with ``bundle.*`` keys of its config.yaml changed (what medseg.export reads)."""
    import yaml

    run = folder / "run"
    shutil.copytree(trained["run"], run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["bundle"].update(bundle)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return run


def _class_dice(pred_dir: Path, cases: list[dict], members: list[int]) -> float:
    """Mean Dice over ``cases`` of the class made of the label values ``members``."""
    scores = []
    for case in cases:
        pred = np.isin(np.asarray(nib.load(pred_dir / f"{case['case']}_seg.nii.gz").dataobj), members)
        ref = np.isin(np.asarray(nib.load(case["label"]).dataobj), members)
        scores.append(2 * float((pred & ref).sum()) / max(1.0, float(pred.sum() + ref.sum())))
    return float(np.mean(scores))


def test_int8_export_records_its_validation_dice_and_predicts(trained, tmp_path: Path) -> None:
    from medseg.export import main as export_main

    run = _run_copy(trained, tmp_path, int8_patches=12, int8_max_dice_loss=1.0)
    out = tmp_path / "bundles" / "b"
    assert export_main([str(run), "--int8", "--out", str(out)]) == 0
    meta = json.loads((out / "configs" / "metadata.json").read_text())["medseg_int8"]
    assert meta["refused"] is False and (out / "models" / "model_int8.onnx").is_file()
    assert meta["calibration_patches"] == 12 and meta["validation_cases"] >= 1
    for c in ("liver", "tumour"):
        assert meta["dice_loss"][c] == pytest.approx(meta["fp32_dice"][c] - meta["dice"][c])
    # the recorded fp32 Dice is the training's own final evaluation (same chain, same cases)
    summary = json.loads((run / "metrics.json").read_text())
    assert meta["fp32_dice"]["liver"] == pytest.approx(summary["liver"]["dice"], abs=1e-6)
    # predict --int8 runs the quantised model: its masks give the recorded INT8 Dice on the validation cases
    import onnx

    model = onnx.load(str(out / "models" / "model_int8.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)  # QDQ format
    val = json.loads((run / "cases.json").read_text())["val"]
    images = tmp_path / "val"
    images.mkdir()
    for case in val:
        shutil.copy(case["image"], images / Path(case["image"]).name)
    assert predict_main(["--bundle", str(out), "--input", str(images), "--output", str(tmp_path / "p"), "--int8",
                         "--device", "cpu"]) == 0
    import yaml

    classes = yaml.safe_load((run / "config.yaml").read_text())["evaluation"]["classes"]
    assert _class_dice(tmp_path / "p", val, classes["liver"]) == pytest.approx(meta["dice"]["liver"], abs=1e-6)


def test_int8_losing_more_dice_than_allowed_is_refused(trained, tmp_path: Path, capsys) -> None:
    from medseg.export import main as export_main

    run = _run_copy(trained, tmp_path, int8_patches=4, int8_max_dice_loss=-1.0)  # any measured loss exceeds it
    out = tmp_path / "bundles" / "b"
    assert export_main([str(run), "--int8", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "INT8 refused: validation Dice of" in err[0] and "more than bundle.int8_max_dice_loss -1.0" in err[0]
    meta = json.loads((out / "configs" / "metadata.json").read_text())["medseg_int8"]
    assert meta["refused"] is True and meta["file"] is None
    assert not (out / "models" / "model_int8.onnx").exists() and (out / "models" / "model.onnx").is_file()
    worst = max(meta["dice_loss"].values())
    assert f"fell by {worst:.4f}" in err[0]
    assert "python -m medseg.export RUN_DIR --int8 --set bundle.int8_max_dice_loss=" in err[0]
    # the remedy the line names works: the same run, the limit raised for this export only
    accepted = tmp_path / "bundles" / "accepted"
    assert export_main([str(run), "--int8", "--out", str(accepted), "--set", "bundle.int8_max_dice_loss=1.0"]) == 0
    again = json.loads((accepted / "configs" / "metadata.json").read_text())["medseg_int8"]
    assert again["refused"] is False and again["max_dice_loss"] == 1.0 and (accepted / "models" / INT8_FILE).is_file()
    assert again["dice"] == meta["dice"]  # the same calibration patches, the same INT8 model (seeded transforms)
    assert "int8_max_dice_loss: -1.0" in (run / "config.yaml").read_text()  # the run itself is unchanged
    capsys.readouterr()
    assert export_main([str(run), "--out", str(tmp_path / "bundles" / "x"), "--set", "network.channels=[4,8]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--set network.channels: export takes bundle.* keys only" in err[0]
    code = predict_main(["--bundle", str(out), "--input", str(trained["dataset"] / "imagesTr"),
                         "--output", str(tmp_path / "p"), "--int8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model_int8.onnx: missing" in err[0]


def test_distillation_loss_and_teacher_held_apart() -> None:
    from medseg.engine.distill import DistillationLoss, TeacherStudent

    torch.manual_seed(0)
    student, teacher = torch.nn.Conv3d(1, 3, 1), torch.nn.Conv3d(1, 3, 1)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    pair = TeacherStudent(student, teacher).train()
    task = torch.nn.Module()
    task.forward = lambda pred, label: torch.zeros((), requires_grad=True)  # only the soft term
    loss_fn = DistillationLoss(task, pair, temperature=2.0, weight=0.5)
    x = torch.randn(2, 1, 4, 4, 4)
    loss = loss_fn(pair(x), None)
    t_probs = torch.softmax(teacher(x) / 2, 1)
    s_logp = torch.log_softmax(student(x) / 2, 1)
    expected = 0.5 * 4 * (t_probs * (t_probs.log() - s_logp)).sum(1).mean()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5) and float(loss.detach()) > 0
    loss.backward()
    assert student.weight.grad is not None and teacher.weight.grad is None
    assert set(pair.state_dict()) == {"student.weight", "student.bias"}  # the teacher is not saved with it
    assert not teacher.training and all(torch.equal(v, teacher.state_dict()[k]) for k, v in frozen.items())
    student.load_state_dict(teacher.state_dict())  # the same logits: no soft loss
    assert float(loss_fn(pair(x), None)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_distill_end_to_end_on_a_tiny_budget(trained, tmp_path: Path, capsys) -> None:
    from medseg.distill import main as distill_main

    # --data-dir the dataset folder itself (not the folder holding it); --int8 on the student
    code = distill_main(["--teacher", str(trained["bundle"]), "--student", "light_unet",
                         "--data-dir", str(trained["dataset"]), "--budget-minutes", "0.2",
                         "--output-dir", str(tmp_path / "run"), "--set", "distill.temperature=3",
                         "--set", "network.channels=[4,8,16]", "--int8", "--set", "bundle.int8_patches=4",
                         "--set", "bundle.int8_max_dice_loss=1.0"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err
    record = json.loads((tmp_path / "run" / "distill.json").read_text())
    assert record["student"] == "light_unet" and record["temperature"] == 3.0 and record["iterations"] >= 1
    student_bundle = trained["bundle"].parent / "liver_ct_segmentation_light_unet"
    meta = json.loads((student_bundle / "configs" / "metadata.json").read_text())
    assert meta["medseg_distill"]["dice"] == record["dice"]
    assert meta["medseg_export"]["run"] == "run"  # the run folder's name, never an absolute path
    assert record["teacher"] == meta["medseg_distill"]["teacher"] == "liver_ct_segmentation-v1"  # nor the teacher's
    assert (student_bundle / "models" / INT8_FILE).is_file() and meta["medseg_int8"]["calibration_patches"] == 4
    # the recipe the bundle and the run keep is the epochs it ran, not the cap the time budget stopped
    train_json = json.loads((student_bundle / "configs" / "train.json").read_text())
    assert train_json["epochs"] == record["epochs_run"] < 100_000
    assert json.loads((student_bundle / "configs" / "medseg_task.json").read_text())["training"]["epochs"] == \
        record["epochs_run"]
    # exported again from its run (as the missing-INT8 message says), the bundle keeps the teacher/student record
    from medseg.workflows.export import export_run

    again = export_run(tmp_path / "run", out=tmp_path / "again" / "student")
    assert json.loads((again / "configs" / "metadata.json").read_text())["medseg_distill"] == record
    assert json.loads((student_bundle / "configs" / "medseg_task.json").read_text())["network"]["name"] == "light_unet"
    assert (student_bundle / "models" / "model.onnx").is_file()
    # the teacher's Dice is its own bundle's validation Dice (same cases, same chain)
    teacher_meta = json.loads((trained["bundle"] / "configs" / "metadata.json").read_text())
    for name in ("liver", "tumour"):
        assert record["dice"][name]["teacher_dice"] == pytest.approx(teacher_meta["eval_metrics"][f"{name}_dice"],
                                                                      abs=1e-4)
        assert f"{name}: teacher Dice {record['dice'][name]['teacher_dice']:.3f}" in out


@pytest.mark.parametrize("budget", ["nan", "inf", "0", "-3"])
def test_distill_refuses_a_budget_that_never_ends_or_never_starts(budget: str, tmp_path: Path, capsys) -> None:
    from medseg.distill import main as distill_main

    with pytest.raises(SystemExit) as stop:
        distill_main(["--teacher", str(tmp_path), "--budget-minutes", budget])
    assert stop.value.code == 2 and "finite number of minutes" in capsys.readouterr().err



@pytest.mark.parametrize("command,flag", [("train", "--max-minutes"), ("plan", "--budget-minutes")])
def test_time_budgets_of_train_and_plan_are_finite(command: str, flag: str, capsys) -> None:
    import importlib

    parser = importlib.import_module(f"medseg.cli.{command}").build_parser()
    for bad in ("nan", "inf", "-1", "ten"):
        with pytest.raises(SystemExit):
            parser.parse_args(["liver", flag, bad])
        assert "number of minutes" in capsys.readouterr().err
    assert getattr(parser.parse_args(["liver", flag, "2.5"]), flag[2:].replace("-", "_")) == 2.5


def test_distill_one_line_for_a_missing_teacher_and_a_file_as_output_dir(tmp_path: Path, capsys) -> None:
    from medseg.distill import main as distill_main

    assert distill_main(["--teacher", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope: no such bundle folder" in err and "Traceback" not in err
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    assert distill_main(["--teacher", str(tmp_path), "--output-dir", str(afile)]) == 2  # before the teacher loads
    err = capsys.readouterr().err
    assert f"--output-dir {afile}: a file, not a folder" in err and "Traceback" not in err


def test_missing_engine_model_names_the_bundle_run_to_export_again(tmp_path: Path) -> None:
    from medseg.errors import MedsegError

    (tmp_path / "configs").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps({"medseg_export": {"run": "/data/runs/liver/7"}}))
    net = small_network("unet", 3, 16)
    with pytest.raises(MedsegError, match=r"exported without INT8\); .*medseg.export /data/runs/liver/7 --int8$"):
        build_engine("openvino", net, tmp_path / "models", int8=True)
    with pytest.raises(MedsegError, match=r"before medseg exported ONNX\); .*medseg.export /data/runs/liver/7$"):
        build_engine("onnxruntime", net, tmp_path / "models")


def test_predict_help_choices_are_the_workflow_tables() -> None:
    """``medseg.cli.predict`` keeps plain copies (``--help`` without torch and MONAI): the same as the sources."""
    from medseg.cli import predict as cli
    from medseg.inference.runtimes import ENGINES
    from medseg.workflows.predict import FORMATS

    assert cli.FORMATS == FORMATS and cli.ENGINES == ENGINES


def test_predict_help_imports_neither_torch_nor_monai() -> None:
    import subprocess

    code = "import sys, medseg.cli.predict as c; c.build_parser(); print(sorted({'torch', 'monai'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_training_with_bundle_int8_exports_the_int8_model(tmp_path: Path, monkeypatch) -> None:
    from medseg.train import main as train_main

    from tests.conftest import FAST, write_msd

    write_msd(tmp_path / "data" / "Synthetic")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    sets = FAST + ["data.dataset=Synthetic", f"bundle.dir={tmp_path / 'bundles'}", "bundle.int8=true",
                   "bundle.int8_patches=4", "bundle.int8_max_dice_loss=1.0"]
    args = ["liver", "--epochs", "1", "--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "run")]
    assert train_main(args + [a for o in sets for a in ("--set", o)]) == 0
    bundle = tmp_path / "bundles" / "liver_ct_segmentation"
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert (bundle / "models" / "model_int8.onnx").is_file() and meta["medseg_int8"]["calibration_patches"] == 4
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert meta["medseg_int8"]["fp32_dice"]["liver"] == pytest.approx(summary["liver"]["dice"], abs=1e-6)


def test_deferred_module_runs_its_code_on_the_first_attribute_it_lacks(tmp_path: Path, monkeypatch) -> None:
    from medseg.cli import startup

    package = tmp_path / "deferme_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("import pathlib\npathlib.Path(__file__).with_name('ran').touch()\nVALUE = 42\n")
    (package / "sub.py").write_text("from deferme_pkg import VALUE\nDOUBLE = 2 * VALUE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    startup.defer(["deferme_pkg"])
    try:
        import deferme_pkg

        assert not (package / "ran").exists()  # imported, its code not run
        assert Path(deferme_pkg.__file__) == package / "__init__.py" and deferme_pkg.__path__  # spec attributes only
        assert not (package / "ran").exists()
        assert deferme_pkg.VALUE == 42 and (package / "ran").exists()  # the first attribute it defines runs it
        from deferme_pkg import sub

        assert sub.DOUBLE == 84
        with pytest.raises(AttributeError):
            deferme_pkg.missing
    finally:
        for name in ("deferme_pkg", "deferme_pkg.sub"):
            sys.modules.pop(name, None)


@pytest.mark.slow
def test_predict_process_leaves_what_prediction_never_uses_unloaded() -> None:
    """The modules ``python -m medseg.predict`` defers stay unrun through MONAI's import and the predict workflow's."""
    import subprocess

    code = ("import sys, types; from medseg.cli.startup import PREDICT_DEFERRED, defer; defer(PREDICT_DEFERRED); "
            "import medseg.workflows.predict; "
            "print(sorted(m for m in PREDICT_DEFERRED if type(sys.modules.get(m, 0)) is types.ModuleType))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # the same check fails where nothing is deferred: MONAI's import runs monai.handlers and matplotlib
    out = subprocess.run([sys.executable, "-c", code.replace("defer(PREDICT_DEFERRED); ", "")], capture_output=True,
                         text=True, check=True).stdout
    assert "monai.handlers" in out and "matplotlib" in out


def test_distill_budget_anneals_the_learning_rate_and_stops(monkeypatch) -> None:
    from ignite.engine import Engine

    from medseg.workflows import distill

    clock = [0.0]
    monkeypatch.setattr(distill.time, "monotonic", lambda: clock[0])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    lrs = []

    def step(engine, batch):
        lrs.append(optimizer.param_groups[0]["lr"])
        clock[0] += 6.0  # seconds per iteration: 10 iterations in a one-minute budget

    trainer = Engine(step)
    distill._budget(trainer, optimizer, 1.0, 0.01)
    trainer.run([0] * 100, max_epochs=5)
    assert trainer.state.iteration == 11  # stops after the iteration that passes the budget
    assert lrs[0] == pytest.approx(1.0) and lrs[5] == pytest.approx(0.505)  # cosine over the time: half way at 30 s
    assert lrs[10] == pytest.approx(0.01) and all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_calibration_patches_are_the_same_for_the_same_seed(trained) -> None:
    """MONAI's random crops and augmentations keep their own random states: seeding torch alone drew other patches
    in each export of the same run (and so another INT8 model and verdict)."""
    import yaml

    from medseg.bundle.int8 import calibration_patches
    from medseg.config import TaskConfig
    from medseg.workflows.train import read_cases

    run = trained["run"]
    cfg = TaskConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text()), source="config.yaml")
    train_cases, _ = read_cases(run, str(trained["work"]))
    first, second, other = (list(calibration_patches(cfg, train_cases, 6, seed)) for seed in (0, 0, 1))
    assert len(first) == 6 and all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_train_and_distill_refuse_an_output_dir_holding_an_earlier_run(tmp_path: Path, capsys) -> None:
    """A second run into an earlier run's folder would overwrite its checkpoints, metrics and report: one line,
    exit 2, before any work, and the earlier run's files are untouched. A new or empty folder is fine."""
    from medseg.distill import main as distill_main
    from medseg.errors import MedsegError, check_new_run_folder
    from medseg.train import main as train_main

    earlier = tmp_path / "run"
    (earlier / "checkpoints").mkdir(parents=True)
    (earlier / "config.yaml").write_text("task: liver\n")
    (earlier / "checkpoints" / "best.pt").write_bytes(b"weights")
    (earlier / "history.json").write_text("[]")
    assert train_main(["liver", "--output-dir", str(earlier)]) == 2
    err = capsys.readouterr().err
    assert f"--output-dir {earlier}: holds an earlier run (checkpoints)" in err
    assert f"--resume {earlier}" in err and "Traceback" not in err
    assert distill_main(["--teacher", str(tmp_path), "--output-dir", str(earlier)]) == 2  # before the teacher loads
    err = capsys.readouterr().err
    assert f"--output-dir {earlier}: holds an earlier run (checkpoints)" in err and "Traceback" not in err
    assert (earlier / "config.yaml").read_text() == "task: liver\n"
    assert (earlier / "checkpoints" / "best.pt").read_bytes() == b"weights"
    assert sorted(p.name for p in earlier.iterdir()) == ["checkpoints", "config.yaml", "history.json"]

    kfold = tmp_path / "kfold"
    (kfold / "fold_1").mkdir(parents=True)
    (kfold / "fold_1" / "history.json").write_text("[]")
    with pytest.raises(MedsegError, match=r"holds an earlier run \(fold_1/history\.json\)"):
        check_new_run_folder(kfold, "--output-dir")
    # a run that stopped before training (e.g. at an unreachable tracking server) left only its config: redo it
    unstarted, empty, unrelated = tmp_path / "unstarted", tmp_path / "empty", tmp_path / "notes"
    unstarted.mkdir()
    (unstarted / "config.yaml").write_text("task: liver\n")
    (unstarted / "resume.json").write_text("{}")
    empty.mkdir()
    unrelated.mkdir()
    (unrelated / "README.txt").write_text("my notes")
    for fine in (unstarted, empty, unrelated, tmp_path / "not-yet"):
        check_new_run_folder(fine, "--output-dir")  # no error
