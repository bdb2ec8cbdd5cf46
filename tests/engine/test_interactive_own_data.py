"""Click-guided bundles on a researcher's own data: 2D images, the ``interactive.window`` key, medseg.rank's
input checks and ``--output`` (defects found by an audit with a small dataset of its own)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.bundle.load import LoadedBundle
from medseg.config import load_config
from medseg.errors import MedsegError
from medseg.inference import build_chain
from medseg.networks import build_network
from medseg.transforms import input_channels
from medseg.transforms.guidance import AddGuidanced, map_clicks
from medseg.workflows import rank
from medseg.workflows.interact import CaseSession
from tests.engine.test_interactive import tiny_bundle, write_case

REPO = Path(__file__).resolve().parents[2]
TINY_2D = ["training.patch_size=[32,32]", "network.channels=[4,8,16]", "network.strides=[2,2]",
           "network.num_res_units=1", "training.device=cpu"]


def tiny_2d_bundle(interactive: bool = True) -> LoadedBundle:
    cfg = load_config(str(REPO / "pipelines" / "em_2d_folder.yaml"),
                      TINY_2D + [f"interactive.enabled={str(interactive).lower()}"])
    torch.manual_seed(0)
    net = build_network(cfg.network, input_channels(cfg), len(cfg.data.labels)).eval()
    return LoadedBundle("tiny2d", cfg, net, {0: "background", 1: "membrane"}, build_chain(cfg))


def write_png(path: Path, shape=(40, 48)) -> Path:
    from PIL import Image

    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.where(((yy % 12) < 3) | ((xx % 10) < 2), 60, 190).astype(np.uint8)
    Image.fromarray(image).save(path)
    return path


def test_clicks_map_onto_a_2d_grid_through_its_affines():
    """A 2D MetaTensor carries a 4x4 affine: a 2D click maps through it (it raised a numpy shape error)."""
    from monai.data import MetaTensor

    original = np.diag([-1.0, -1.0, 1.0, 1.0])  # a PNG read and reoriented to RAS: both axes flipped
    now = np.eye(4)
    now[:2, 3] = [-39.0, -47.0]
    (i, j, label), = map_clicks([[5, 7, 1]], original, now)
    assert [i, j] == pytest.approx([34.0, 40.0]) and label == 1
    image = MetaTensor(torch.zeros(1, 40, 48), affine=torch.as_tensor(now))
    image.meta["original_affine"] = original
    out = AddGuidanced("image", n_labels=2, sigma=1.0)({"image": image, "clicks": [[5, 7, 1]]})["image"]
    assert out.shape == (3, 40, 48) and float(out[2, 34, 40]) == pytest.approx(1.0)


def test_click_undo_save_on_a_click_guided_2d_bundle(tmp_path):
    """Click-guided training runs on 2D images; a click on such a bundle (medseg.serve) was a 500 error."""
    src = write_png(tmp_path / "sec.png")
    session = CaseSession(tiny_2d_bundle(), "sec", src)
    assert session.n_guidance == 2 and session.shape == (48, 40)  # (x, y), as the chain gives it
    auto = session.labels.copy()
    entry = session.click([5, 7], 1, positive=True)
    assert entry["mode"] == "guided rerun"
    assert float(session.data["image"][session.g0 + 1].max()) == pytest.approx(1.0)  # the click's guidance map
    assert session.undo() and np.array_equal(session.labels, auto)
    assert [p.name for p in session.save(tmp_path / "out")] == ["sec_seg.nii.gz", "sec_seg.png", "sec_clicks.json"]
    from PIL import Image  # the picture mask as medseg.predict writes it: rows x columns, the stored values

    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "sec_seg.png")), session.labels.T)


@pytest.mark.parametrize("window, message", [("[0,0,0]", "sizes must be >= 1"), ("[-5,10,10]", "sizes must be >= 1"),
                                             ("[16,16]", "give 3 values"), ("[16,16,16,16]", "give 3 values")])
def test_interactive_window_refuses_sizes_that_would_make_clicks_do_nothing(window, message):
    """A window of 0 or negative voxels gave an empty box (every click changed nothing); a wrong number of values
    was silently cut or taken as a slice-mode window."""
    with pytest.raises(MedsegError, match=rf"interactive\.window.*{message}"):
        load_config(str(REPO / "pipelines" / "liver_interactive.yaml"), [f"interactive.window={window}"])
    cfg = load_config(str(REPO / "pipelines" / "liver_interactive.yaml"), ["interactive.window=[500,500,500]"])
    assert cfg.interactive.window == [500, 500, 500]  # larger than an image: cut to the grid, as the patch is
    slice_mode = load_config("liver_2d", ["interactive.window=[32,32]"])
    assert slice_mode.interactive.window == [32, 32]


def test_rank_checks_each_input_as_predict_does(tmp_path, monkeypatch):
    """A damaged file or a 2D picture for a 3D bundle is skipped with medseg.predict's line, not MONAI's
    'applying transform <...LoadImaged object at 0x...>' or a sliding-window shape error."""
    monkeypatch.setattr(rank, "load_bundle", lambda *a, **k: tiny_bundle(False, seed=3))
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    write_case(folder / "ct.nii.gz")
    (folder / "broken.nii.gz").write_bytes(b"not a nifti file")
    write_png(folder / "picture.png")
    skipped = {}
    rows = rank.run("b", folder, tmp_path / "ranking.csv", on_skip=lambda name, why: skipped.update({name: why}))
    assert [r["case"] for r in rows] == ["ct"]
    assert "cannot be read as an image" in skipped["broken"]
    assert "a 2D image" in skipped["picture"] and "network is 3D" in skipped["picture"]


def test_rank_refuses_an_output_below_a_file_before_scoring(tmp_path, monkeypatch):
    """``--output FILE/sub/ranking.csv`` ended in a NotADirectoryError traceback after every case was scored."""
    monkeypatch.setattr(rank, "load_bundle", lambda *a, **k: pytest.fail("scored before the output was checked"))
    (tmp_path / "a_file").write_text("x")
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    write_case(folder / "ct.nii.gz")
    with pytest.raises(MedsegError, match="--output .*give a CSV file name"):
        rank.run("b", folder, tmp_path / "a_file" / "sub" / "ranking.csv")


def test_rank_refuses_two_inputs_of_one_case_before_scoring(tmp_path, monkeypatch):
    """case0.nii.gz + case0.nii gave two rows named case0 (which is which?)."""
    monkeypatch.setattr(rank, "load_bundle", lambda *a, **k: pytest.fail("scored before the names were checked"))
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    write_case(folder / "case0.nii.gz")
    import nibabel as nib

    nib.save(nib.load(folder / "case0.nii.gz"), folder / "case0.nii")
    with pytest.raises(MedsegError, match=r"case0\.nii and case0\.nii\.gz are both case 'case0' \(the CSV would"
                                          r" list two rows of one name\)|case0\.nii\.gz and case0\.nii are both"):
        rank.run("b", folder, tmp_path / "ranking.csv")
    assert not (tmp_path / "ranking.csv").exists()


def test_rank_series_picks_one_of_several_in_a_dicom_folder(tmp_path, monkeypatch):
    """The refusal of a two-series folder said "choose one with --series UID", which medseg.rank did not have."""
    from medseg.data.dicom import write_series

    monkeypatch.setattr(rank, "load_bundle", lambda *a, **k: tiny_bundle(False, seed=3))
    folder = tmp_path / "two"
    write_series(folder, np.full((30, 28, 10), 40.0, np.float32), np.diag([-0.9, -0.9, 2.5, 1.0]),
                 series_uid="1.2.3.4", prefix="a")
    write_series(folder, np.full((20, 24, 6), 40.0, np.float32), np.diag([-1.0, -1.0, 3.0, 1.0]),
                 series_uid="1.2.3.5", prefix="b")
    with pytest.raises(MedsegError, match="--series"):
        rank.run("b", folder, tmp_path / "ranking.csv")
    rows = rank.run("b", folder, tmp_path / "ranking.csv", series="1.2.3.5")
    assert [r["case"] for r in rows] == ["two"]
    from medseg.cli.rank import build_parser

    assert build_parser().parse_args(["--bundle", "b", "--input", "i", "--series", "1.2.3.5"]).series == "1.2.3.5"


@pytest.mark.slow
def test_killed_and_resumed_click_guided_run_ends_with_the_same_weights(tmp_path):
    """``--resume`` restores every random state: the click simulation's generator too (it restarted from the seed,
    so the resumed epochs drew other clicks than an uninterrupted run and ended with other weights)."""
    import signal
    import subprocess
    import sys

    from medseg.engine.checkpoint import load_checkpoint
    from medseg.train import main
    from tests.conftest import FAST, write_msd
    from tests.engine.test_engine_runs import KILLER, subprocess_env

    write_msd(tmp_path / "data" / "Synthetic", n_cases=4)
    sets = FAST + ["data.dataset=Synthetic", "bundle.enabled=false", "tracking.enabled=false", "training.threads=1",
                   "training.device=cpu", "interactive.max_clicks=3"]

    def cli(out: Path) -> list[str]:
        return [str(REPO / "pipelines" / "liver_interactive.yaml"), "--data-dir", str(tmp_path / "data"),
                "--output-dir", str(out), "--epochs", "3", *[a for s in sets for a in ("--set", s)]]

    assert main(cli(tmp_path / "straight")) == 0
    env = subprocess_env(KILL_AT="5")  # epoch 3 of 3, its first of 2 steps done
    proc = subprocess.run([sys.executable, "-c", KILLER, *cli(tmp_path / "killed")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-m", "medseg.train", "--resume", str(tmp_path / "killed")], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == 6
    assert a["history"]["loss"] == b["history"]["loss"]
    for key, value in a["network"].items():
        assert torch.equal(value, b["network"][key]), key


def test_a_colour_picture_for_a_grey_bundle_is_one_line_in_a_session(tmp_path):
    """medseg.serve gave PyTorch's convolution error for an RGB picture on a grey network, where medseg.predict
    says how many channels the network takes."""
    from PIL import Image

    bundle = tiny_2d_bundle(interactive=False)
    rgb = np.zeros((40, 48, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(MedsegError, match=r"colour\.png: 3 image channels; the network takes 1"):
        CaseSession(bundle, "colour", tmp_path / "colour.png")
