"""Click-guided segmentation: guidance maps, the click simulation, one case corrected by clicks, medseg.rank."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from tests.conftest import FAST, synthetic_case

from medseg.bundle.load import LoadedBundle
from medseg.config import load_config
from medseg.engine.interactive import ClickIteration, initial_clicks, largest_error_click, trainer_arguments
from medseg.errors import MedsegError
from medseg.inference import build_chain
from medseg.networks import build_network
from medseg.transforms import input_channels
from medseg.transforms.guidance import AddGuidanced, guidance_maps, map_clicks
from medseg.workflows import rank
from medseg.workflows.interact import CaseSession, check_case_name, inside

REPO = Path(__file__).resolve().parents[2]


# ---- guidance maps


def test_guidance_maps_have_gaussian_values_at_the_clicks():
    maps = guidance_maps((20, 20, 20), 3, [[5, 6, 7, 1], [15, 15, 15, 0]], sigma=2.0)
    assert maps.shape == (3, 20, 20, 20)
    assert float(maps[1, 5, 6, 7]) == pytest.approx(1.0)
    # 2 voxels = 1 sigma away; torch 2.13's CPU exp is off by up to 8e-5 (relative) in some processes, depending
    # on where its input lies in memory (the same values cloned give the exact result): 1 in 7 runs here
    assert float(maps[1, 7, 6, 7]) == pytest.approx(math.exp(-4 / 8), rel=2e-4)
    assert float(maps[1, 5, 6, 9]) == pytest.approx(math.exp(-4 / 8), rel=2e-4)
    assert float(maps[0, 15, 15, 15]) == pytest.approx(1.0)
    assert float(maps[2].abs().sum()) == 0.0  # no click on label 2
    assert float(maps[1, 15, 15, 15]) == 0.0  # far from the label-1 click (beyond 4 sigma)
    with pytest.raises(ValueError, match="label 3"):
        guidance_maps((4, 4, 4), 3, [[1, 1, 1, 3]], 1.0)


def test_clicks_follow_the_affines_and_the_transform_appends_channels():
    original = np.diag([-2.0, 2.0, 3.0, 1.0])
    original[:3, 3] = [40.0, -10.0, 5.0]
    now = np.diag([1.0, 1.0, 1.0, 1.0])
    now[:3, 3] = [20.0, -8.0, 11.0]
    (i, j, k, label), = map_clicks([[3, 4, 2, 1]], original, now)
    world = original @ [3, 4, 2, 1]
    assert [i, j, k] == pytest.approx(list(world[:3] - now[:3, 3]))
    assert label == 1
    from monai.data import MetaTensor

    image = MetaTensor(torch.zeros(1, 30, 30, 30), affine=torch.as_tensor(now))
    image.meta["original_affine"] = original
    out = AddGuidanced("image", n_labels=3, sigma=1.5)({"image": image, "clicks": [[3, 4, 2, 2]]})["image"]
    assert out.shape == (4, 30, 30, 30)
    assert float(out[3, round(i), round(j), round(k)]) == pytest.approx(1.0, abs=0.05)  # nearest voxel
    assert float(out[1:3].sum()) == 0.0
    auto = AddGuidanced("image", n_labels=3)({"image": image})["image"]
    assert auto.shape == (4, 30, 30, 30) and float(auto[1:].abs().sum()) == 0.0


# ---- click simulation


def test_largest_error_click_is_the_centre_of_the_largest_error_region():
    label = np.zeros((30, 30, 30), np.int64)
    label[2:11, 2:11, 2:11] = 1  # a missed 9^3 cube: the largest error, centre (6, 6, 6)
    label[20:23, 20:23, 20:23] = 2  # a missed 3^3 cube
    pred = np.zeros_like(label)
    pred[25:29, 2:6, 2:6] = 1  # a false 4^3 region (background there)
    assert largest_error_click(pred, label) == [6, 6, 6, 1]
    pred[2:11, 2:11, 2:11] = 1  # the big cube is found now: the false region (4^3) beats the 3^3 miss
    click = largest_error_click(pred, label)
    assert click[-1] == 0 and 25 <= click[0] < 29 and 2 <= click[1] < 6 and 2 <= click[2] < 6
    assert largest_error_click(label, label) is None


def test_the_initial_background_click_is_near_the_foreground_where_the_image_is_not_zero():
    label = np.zeros((30, 30, 30), np.int64)
    label[10:14, 10:14, 10:14] = 1
    image = np.zeros((30, 30, 30), np.float32)
    image[5:25, 5:25, 5:25] = 0.5  # the rest is padding (0)
    for seed in range(20):
        click = initial_clicks(label, 2, np.random.default_rng(seed), image)[0]
        assert click[-1] == 0 and all(7 <= c < 17 for c in click[:3])  # within 3 voxels of the foreground
    far = initial_clicks(label, 2, np.random.default_rng(0), np.zeros_like(image))[0]  # no such voxel: anywhere
    assert far[-1] == 0 and label[tuple(far[:3])] == 0


def test_error_regions_are_of_one_kind_and_earlier_clicks_are_not_repeated():
    label = np.zeros((20, 20, 20), np.int64)
    label[2:8, 2:12, 2:12] = 1  # missed liver (6x10x10 = 600 voxels)...
    pred = np.zeros_like(label)
    pred[8:16, 2:12, 2:12] = 1  # ...touching false liver (8x10x10 = 800): one mixed region of 1400 voxels
    click = largest_error_click(pred, label)
    assert click[-1] == 0 and 8 <= click[0] < 16  # the larger kind alone, its centre inside the false part
    assert largest_error_click(pred, label, [click], exclude=5.0)[-1] == 1  # most of it excluded: the miss now
    assert largest_error_click(pred, label, [click, [4, 6, 6, 1]], exclude=40.0) is None  # nothing left


class GuidanceEcho(torch.nn.Module):
    """A tiny network that predicts label c where the guidance channel c is above 0.3 (background elsewhere)."""

    def __init__(self, n_labels: int) -> None:
        super().__init__()
        self.n = n_labels
        self.scale = torch.nn.Parameter(torch.ones(()))  # so eval()/train() and devices behave as a real one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x[:, -self.n:] * self.scale
        logits = (g > 0.3).float() * 10.0
        logits[:, 0] += 1.0  # background wins where no guidance is
        return logits


def test_click_simulation_on_a_tiny_network_clicks_its_largest_errors():
    label = torch.zeros(2, 1, 24, 24, 24)
    label[:, 0, 3:15, 3:15, 3:15] = 1
    label[:, 0, 18:22, 18:22, 18:22] = 2
    image = torch.randn(2, 1 + 3, 24, 24, 24)
    sim = ClickIteration(n_labels=3, max_clicks=6, sigma=1.5, auto_prob=0.0, seed=1, correct_prob=0.0)
    net = GuidanceEcho(3)
    clicks = sim.simulate(net, image, label)
    lab = label[:, 0].numpy().astype(int)
    for b in range(2):
        first = initial_clicks(lab[b], 3, np.random.default_rng(0))
        assert len(clicks[b]) >= len(first) == 3  # one initial click per label present
        assert len(clicks[b]) <= 3 + 5
        for click in clicks[b]:
            *p, value = click
            assert lab[b][tuple(p)] == value  # every click carries the true label of its voxel
            assert float(image[b, 1 + value][tuple(p)]) == pytest.approx(1.0)  # and is drawn in its channel
        # replay: each correction click is the largest-error centre of the tiny network's prediction before it
        for n in range(3, len(clicks[b])):
            maps = guidance_maps((24, 24, 24), 3, clicks[b][:n], 1.5)
            pred = net(torch.cat([image[b:b + 1, :1], maps[None]], 1)).argmax(1)[0].numpy()
            assert largest_error_click(pred, lab[b], clicks[b][:n]) == clicks[b][n]
        points = [tuple(c[:-1]) for c in clicks[b]]
        assert len(set(points)) == len(points)  # no click repeated
    assert net.training  # the simulation's eval passes leave the mode as it was
    corrections = ClickIteration(n_labels=3, max_clicks=6, sigma=1.5, auto_prob=0.0, seed=1, correct_prob=1.0)
    image = torch.randn(2, 1 + 3, 24, 24, 24)
    started = corrections.simulate(net, image, label)
    for b in range(2):  # no initial clicks: the first click corrects the automatic mask (all background here)
        maps = guidance_maps((24, 24, 24), 3, [], 1.5)
        auto = net(torch.cat([image[b:b + 1, :1], maps[None]], 1)).argmax(1)[0].numpy()
        assert 1 <= len(started[b]) <= 6 and started[b][0] == largest_error_click(auto, lab[b])
    sim_auto = ClickIteration(n_labels=3, max_clicks=6, sigma=1.5, auto_prob=1.0)
    assert sim_auto.simulate(net, image, label) == [[], []]
    assert float(image[:, 1:].abs().sum()) == 0.0  # no clicks: zero guidance (automatic segmentation)


def test_interactive_config_gives_guidance_channels_and_the_trainer_hook():
    cfg = load_config(str(REPO / "pipelines" / "liver_interactive.yaml"), FAST)
    assert input_channels(cfg) == 1 + 3
    assert isinstance(trainer_arguments(cfg)["iteration_update"], ClickIteration)
    plain = load_config("liver", FAST)
    assert input_channels(plain) == 1 and trainer_arguments(plain) == {}
    with pytest.raises(MedsegError, match="interactive.max_clicks"):
        load_config("liver", ["interactive.max_clicks=0"])


# ---- one case corrected by clicks (untrained tiny networks: the mechanics, not the quality)


def tiny_bundle(interactive: bool, seed: int = 0, sets: tuple[str, ...] = (),
                pipeline: str = "liver_interactive.yaml") -> LoadedBundle:
    cfg = load_config(str(REPO / "pipelines" / pipeline),
                      FAST + [f"interactive.enabled={str(interactive).lower()}", "training.device=cpu", *sets])
    torch.manual_seed(seed)
    net = build_network(cfg.network, input_channels(cfg), len(cfg.data.labels)).eval()
    return LoadedBundle("tiny", cfg, net, {0: "background", 1: "liver", 2: "tumour"}, build_chain(cfg))


def write_case(path: Path, seed: int = 0, noise: float = 0.0) -> Path:
    image, _, affine = synthetic_case(seed=seed)
    affine = affine @ np.diag([-1.0, 1.0, 1.0, 1.0])  # a flipped axis: the chain reorients and must invert
    if noise:
        image = image + np.random.default_rng(seed).normal(0, noise, image.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(image, affine), path)
    return path


@pytest.mark.parametrize("interactive", [False, True])
def test_case_session_click_undo_save_keeps_the_input_geometry(tmp_path, interactive):
    src = write_case(tmp_path / "ct.nii.gz")
    session = CaseSession(tiny_bundle(interactive), "ct", src)
    auto = session.labels.copy()
    assert auto.shape == nib.load(src).shape
    c = 1 if (auto == 1).sum() < (auto == 2).sum() else 2  # the rarer class in the (random) automatic mask
    candidates = np.argwhere(auto != c)  # a voxel the automatic mask does not give it, near the centre
    voxel = [int(v) for v in candidates[np.abs(candidates - [20, 18, 14]).sum(1).argmin()]]
    entry = session.click(voxel, c, positive=True)
    assert entry["mode"] == ("guided rerun" if interactive else "local correction")
    if not interactive:  # a positive local correction always gives the clicked voxel the class
        assert session.labels[tuple(voxel)] == c and entry["changed_voxels"] >= 1
    assert entry["changed_voxels"] == int((session.labels != auto).sum())
    assert session.undo() and np.array_equal(session.labels, auto)
    assert not session.undo()
    session.click(voxel, c, positive=True)
    files = session.save(tmp_path / "out")
    assert [f.name for f in files] == ["ct_seg.nii.gz", "ct_clicks.json"]
    saved, original = nib.load(files[0]), nib.load(src)
    assert saved.shape == original.shape and np.array_equal(saved.affine, original.affine)
    assert np.array_equal(np.asarray(saved.dataobj), session.labels)
    log = json.loads(files[1].read_text())
    assert [e.get("voxel") for e in log["events"] if "voxel" in e] == [voxel, voxel]
    assert "undo" in log["events"][1]
    with pytest.raises(MedsegError, match="outside the image"):
        session.click([99, 0, 0], 1)
    with pytest.raises(MedsegError, match="class 3"):
        session.click(voxel, 3)


def write_permuted_case(path: Path, seed: int = 1) -> Path:
    """A case whose array axes are not RAS: axes 0 and 2 swapped and axis 1 flipped (reoriented by the chain)."""
    image, _, affine = synthetic_case(shape=(40, 34, 30), spacing=(1.2, 1.7, 2.5), seed=seed)
    swap = np.array([[0, 0, 1, 0], [0, -1, 0, 33], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)  # new -> old
    nib.save(nib.Nifti1Image(np.ascontiguousarray(image.transpose(2, 1, 0)[:, ::-1]), affine @ swap), path)
    return path


@pytest.mark.parametrize("interactive,largest", [(True, False), (False, False), (False, True)])
def test_windowed_click_equals_the_whole_volume_post_processing(tmp_path, interactive, largest):
    """A click maps only its window back onto the input grid; the mask equals the chain's post-processing of
    the whole volume (resampled, cropped and reoriented back), and the geometry is the input's."""
    bundle = tiny_bundle(interactive, seed=2)
    if largest:  # a later post-processing step: it runs on the whole map after the window is pasted
        bundle.cfg.evaluation.keep_largest_component = ["liver"]
        bundle.built_chain = build_chain(bundle.cfg)
    src = write_permuted_case(tmp_path / "ct.nii.gz")
    session = CaseSession(bundle, "ct", src, window=[8, 8, 8])
    inversion = session.inversion
    assert inversion is not None and len(inversion.rest) == int(largest)
    assert inversion.perm != [0, 1, 2] and any(inversion.flips)  # the reorientation is undone through the view
    assert session.inversion.size != inversion.grid  # the resampling is inverted too (3 mm grid -> input grid)
    original = nib.load(src)
    changed = 0
    for i, (voxel, positive) in enumerate([([12, 17, 20], True), ([15, 12, 22], False), ([5, 30, 8], True)]):
        before = session.labels
        entry = session.click(voxel, 1 + i % 2, positive)
        whole, affine = session._post()  # the chain's whole-volume post-processing of the same logits
        assert session.labels.shape == original.shape and np.allclose(affine, original.affine)
        assert np.allclose(session.affine, original.affine)
        assert int((session.labels != whole).sum()) <= 2  # equal up to float rounding at class boundaries
        assert entry["changed_voxels"] == int((session.labels != before).sum())
        assert not np.shares_memory(before, session.labels)  # masks handed out earlier are not changed
        changed += entry["changed_voxels"]
    assert changed > 0  # the clicks did change the mask
    assert session.undo()
    assert int((session.labels != session._post()[0]).sum()) <= 2


def test_windowed_inversion_falls_back_for_a_chain_it_does_not_cover(tmp_path):
    bundle = tiny_bundle(True)
    bundle.built_chain.postprocessing.transforms[0].softmax = (False,)
    bundle.built_chain.postprocessing.transforms[0].sigmoid = (True,)
    session = CaseSession(bundle, "ct", write_case(tmp_path / "ct.nii.gz"), window=[8, 8, 8])
    assert session.inversion is None
    session.click([20, 18, 14], 1)
    assert np.array_equal(session.labels, session._post()[0])  # the whole post-processing per click


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_click_in_an_onnx_engine_gives_the_torch_mask(tmp_path, engine):
    pytest.importorskip(engine)
    import dataclasses

    from medseg.bundle.onnx import export_onnx

    bundle = tiny_bundle(True, seed=4)
    src = write_case(tmp_path / "ct.nii.gz")
    with pytest.raises(MedsegError, match=f"--engine {engine}"):  # no model file: one line naming what to do
        CaseSession(bundle, "ct", src, engine=engine)
    (tmp_path / "b" / "models").mkdir(parents=True)
    export_onnx(bundle.network, tmp_path / "b" / "models" / "model.onnx", [16, 16, 16], input_channels(bundle.cfg))
    onnx = CaseSession(dataclasses.replace(bundle, root=tmp_path / "b"), "ct", src, engine=engine, window=[8, 8, 8])
    ref = CaseSession(bundle, "ct", src, window=[8, 8, 8])
    for voxel, positive in [([20, 18, 14], True), ([12, 10, 9], False)]:
        onnx.click(voxel, 1, positive)
        ref.click(voxel, 1, positive)
        assert (onnx.labels != ref.labels).mean() <= 1e-3  # float32 in both: equal but for rounding at ties


def test_negative_local_click_removes_the_region_under_it(tmp_path):
    session = CaseSession(tiny_bundle(False), "ct", write_case(tmp_path / "ct.nii.gz"))
    session.click([20, 18, 14], 2, positive=True)
    assert session.labels[20, 18, 14] == 2
    entry = session.click([20, 18, 14], 2, positive=False)
    assert session.labels[20, 18, 14] != 2 and entry["changed_voxels"] >= 1


def test_local_correction_shifts_the_threshold_to_the_click_within_the_radius(tmp_path):
    bundle = tiny_bundle(False, sets=("preprocessing.spacing=[2.0,3.0,4.0]",))
    session = CaseSession(bundle, "ct", write_case(tmp_path / "ct.nii.gz"))
    shape = tuple(session.logits.shape[1:])
    spacing, radius = session._grid_spacing(), session._radius()
    assert spacing == pytest.approx([2.0, 3.0, 4.0]) and radius == 15.0  # mm on the network's grid, not voxels
    grid = np.indices(shape)
    c0 = shape[0] // 2
    ramp = torch.from_numpy((grid[0] - c0 - 0.5).astype(np.float32)) * 0.5  # class 1 likelier with i: > 0.5 for i > c0
    session.logits = torch.stack([torch.zeros(shape), ramp, torch.full(shape, -20.0)])
    before = session.logits.argmax(0).numpy()
    full = tuple(slice(0, n) for n in shape)
    centre = [shape[1] // 2, shape[2] // 2]

    def near(point):
        return sum(((g - c) * s) ** 2 for g, c, s in zip(grid, point, spacing)) <= radius ** 2

    def taps(point):  # the grid voxels next to the click: always changed
        return np.all([np.abs(g - c) <= 1 for g, c in zip(grid, point)], axis=0)

    point = [c0 - 1, *centre]  # missed: a positive click where class 1 is under 0.5
    session._local(point, 1, True, full)
    after = session.logits.argmax(0).numpy()
    expect = np.where(near(point) & ((grid[0] >= c0 - 1) | taps(point)) & (before != 1), 1, before)  # as likely as the click, nearby
    assert np.array_equal(after, expect) and (after != before).sum() > 1
    assert (after[: c0 - 2] == before[: c0 - 2]).all()  # less likely than the clicked voxel: untouched
    point = [c0 + 2, *centre]  # false: a negative click on class 1 takes it away up to the click's probability
    p1 = torch.softmax(session.logits, 0)[1].numpy()
    session._local(point, 1, False, full)
    again = session.logits.argmax(0).numpy()
    expect = np.where(near(point) & ((p1 <= p1[tuple(point)]) | taps(point)) & (after == 1), 0, after)
    assert np.array_equal(again, expect)
    assert (again[grid[0] > c0 + 3] == 1).all()  # likelier class-1 voxels stay: not the whole region under the click


def test_click_on_a_slice_mode_bundle_works_on_nearby_slices(tmp_path):
    bundle = tiny_bundle(False, pipeline="liver_2d.yaml", sets=("preprocessing.spacing=[2.0,2.0,2.0]",
                                                                 "training.patch_size=[16,16]", "network.strides=null",
                                                                 "network.num_res_units=null"))
    assert bundle.cfg.network.slice_mode and len(bundle.cfg.training.patch_size) == 2
    session = CaseSession(bundle, "ct", write_case(tmp_path / "ct.nii.gz"))
    grid = session.logits.shape[1:]
    window = session._window()
    assert len(window) == 3 and window[2] == min(grid[2], 2 * math.ceil(15.0 / 2.0) + 1)  # the radius in slices
    voxel = [s // 2 for s in session.shape]
    entry = session.click(voxel, 1, positive=True)
    assert session.labels[tuple(voxel)] == 1 and entry["changed_voxels"] >= 1


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "x" * 200, ""])
def test_case_names_cannot_leave_the_output_folder(tmp_path, name):
    with pytest.raises(MedsegError, match="case name"):
        inside(tmp_path, name)
    assert check_case_name("case_001.v2") == "case_001.v2"


# ---- medseg.rank


def test_rank_orders_ambiguous_cases_first(tmp_path, monkeypatch):
    bundle = tiny_bundle(False, seed=3)
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for name in ("a_clear", "b_vague", "c_middle"):
        write_case(folder / f"{name}.nii.gz")
    calls = []

    def fake_probabilities(loaded, path, device="cpu", series=None):  # the entropy ranking on controlled class probabilities
        calls.append(Path(path).name)
        sharp = {"a_clear": 0.98, "c_middle": 0.8, "b_vague": 0.4}[Path(path).name.split(".")[0]]
        p = torch.full((3, 8, 8, 8), (1 - sharp) / 2)
        p[1, 2:6, 2:6, 2:6] = sharp
        p[0] = 1 - p[1] - p[2]
        return p

    monkeypatch.setattr(rank, "load_bundle", lambda *a, **k: bundle)
    monkeypatch.setattr(rank, "probabilities", fake_probabilities)
    rows = rank.run("unused", folder, tmp_path / "ranking.csv")
    assert [r["case"] for r in rows] == ["b_vague", "c_middle", "a_clear"]
    with open(tmp_path / "ranking.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["case"] for t in table] == ["b_vague", "c_middle", "a_clear"]
    assert [int(t["rank"]) for t in table] == [1, 2, 3] and int(table[0]["foreground_voxels"]) == 64
    uniform, _ = rank.uncertainty(torch.full((3, 4, 4, 4), 1 / 3))
    assert uniform == pytest.approx(1.0)


def test_rank_on_real_probabilities_puts_the_noisier_case_first(tmp_path):
    """The chain's own probabilities: the same case with more noise added is less certain."""
    bundle = tiny_bundle(False, seed=3)
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    write_case(folder / "clean.nii.gz")
    write_case(folder / "noisy.nii.gz", noise=300.0)
    scores = {p.name: rank.uncertainty(rank.probabilities(bundle, p))[0] for p in folder.iterdir()}
    assert scores["noisy.nii.gz"] != scores["clean.nii.gz"]


def test_the_chain_takes_clicks_in_input_voxels(tmp_path):
    """The bundle's chain (AddGuidanced last) maps an item's clicks from file voxels through reorientation,
    resampling and crop onto the network's grid."""
    src = write_case(tmp_path / "ct.nii.gz")  # a flipped x axis: RAS reorientation reverses it
    chain = tiny_bundle(True).chain
    image = chain.preprocessing({"image": str(src), "clicks": [[5, 18, 14, 1]]})["image"]
    assert image.shape[0] == 1 + 3
    peak = np.unravel_index(int(image[2].argmax()), image.shape[1:])
    world = nib.load(src).affine @ [5, 18, 14, 1]
    expected = np.linalg.inv(np.asarray(image.affine)) @ world
    assert np.abs(np.array(peak) - expected[:3]).max() <= 0.5 + 1e-6
    assert float(image[2].max()) > 0.9 and float(image[1].abs().sum()) == float(image[3].abs().sum()) == 0.0


@pytest.mark.slow
def test_click_guided_training_exports_a_bundle_that_runs_automatic(tmp_path, monkeypatch):
    from tests.conftest import write_msd
    from medseg.bundle.load import load_bundle
    from medseg.train import main

    write_msd(tmp_path / "data" / "Synthetic")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    calls = []
    original = ClickIteration.simulate

    def counted(self, *args, **kwargs):
        clicks = original(self, *args, **kwargs)
        calls.append(clicks)
        return clicks

    monkeypatch.setattr(ClickIteration, "simulate", counted)
    args = [str(REPO / "pipelines" / "liver_interactive.yaml"), "--epochs", "2", "--data-dir", str(tmp_path / "data"),
            "--output-dir", str(tmp_path / "run")]
    overrides = FAST + ["data.dataset=Synthetic", f"bundle.dir={tmp_path / 'bundles'}", "tracking.enabled=false",
                        "training.device=cpu"]
    args += [a for o in overrides for a in ("--set", o)]
    assert main(args) == 0
    assert len(calls) == 2 * 2  # every training iteration went through the click simulation
    assert any(len(sample) > 0 for batch in calls for sample in batch)
    loaded = load_bundle(tmp_path / "bundles" / "liver_ct_interactive", torch.device("cpu"))
    assert loaded.chain.in_channels == 4
    session = CaseSession(loaded, "case_000", tmp_path / "data" / "Synthetic" / "imagesTr" / "case_000.nii.gz")
    assert session.n_guidance == 3 and session.labels.shape == (40, 36, 28)
    assert session.click([20, 18, 14], 1)["mode"] == "guided rerun"


def test_rank_skips_an_unreadable_case_and_refuses_a_folder_as_output(tmp_path, monkeypatch, capsys):
    from medseg.cli.rank import run as rank_cli

    monkeypatch.setattr(rank, "load_bundle", lambda *a, **k: tiny_bundle(False, seed=3))
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    write_case(folder / "clean.nii.gz")
    write_case(folder / "noisy.nii.gz", noise=300.0)
    (folder / "broken.nii.gz").write_bytes(b"not a nifti file")
    out = tmp_path / "ranking.csv"
    assert rank_cli(["--bundle", "b", "--input", str(folder), "--output", str(out)]) == 1
    captured = capsys.readouterr()
    assert "case 'broken' skipped" in captured.err and "1 skipped: broken" in captured.out
    lines = out.read_text().splitlines()
    assert lines[0] == "rank,case,uncertainty,foreground_voxels" and {l.split(",")[1] for l in lines[1:]} == {
        "clean", "noisy"}
    with pytest.raises(MedsegError, match="--output .*give a CSV file name"):
        rank.run("b", folder, tmp_path)
    with pytest.raises(MedsegError, match="broken.nii.gz: cannot be ranked"):
        rank.run("b", folder / "broken.nii.gz", out)
