"""Hostile bundles (issue 16.5): pickled code in models/model.pt, '..' or absolute member paths and symbolic
links in a bundle zip, a symbolic link out of a bundle folder. Every file here is written by the test."""

from __future__ import annotations

import json
import pickle
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.bundle.load import load_bundle
from medseg.errors import MedsegError

CPU = torch.device("cpu")


class CreatesMarker:
    """Unpickling this calls open(marker, "w"): a file appears if the pickle's code runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _tiny_net():
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=0)


def _foreign_bundle(root: Path, weights: object | None = None) -> Path:
    """A stock-MONAI bundle (no medseg_task.json): metadata, inference.json with network_def, model.pt."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "metadata.json").write_text(json.dumps({"name": "tiny", "version": "0.1.0"}))
    network = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
               "channels": [4, 8], "strides": [2], "num_res_units": 0}
    inference = {"network_def": network, "preprocessing": {"_target_": "monai.transforms.Compose", "transforms": []}}
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    torch.save(_tiny_net().state_dict() if weights is None else weights, root / "models" / "model.pt")
    return root


@pytest.fixture
def clean_sys_path(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # a trusted bundle's root goes onto sys.path


@pytest.mark.parametrize(("how", "detail"), [
    ("torch.save", "Unsupported global: GLOBAL io.open"),
    ("pickle protocol 2", "Unsupported global: GLOBAL io.open"),
    ("pickle protocol 5", "Unsupported operand 149"),  # torch's checker stops at the first frame opcode
])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_with_code_is_refused_and_never_run(tmp_path, how, detail):
    marker = tmp_path / "marker"
    bundle = _foreign_bundle(tmp_path / "bundle")
    weights = bundle / "models" / "model.pt"
    if how == "torch.save":
        torch.save({"weight": torch.zeros(3), "payload": CreatesMarker(marker)}, weights)
    else:
        weights.write_bytes(pickle.dumps(CreatesMarker(marker), protocol=int(how[-1])))
    with pytest.raises(MedsegError) as err:
        load_bundle(bundle, CPU, trust=True)  # even a trusted bundle's weights load with weights_only=True
    message = str(err.value)
    assert not marker.exists()
    assert "\n" not in message
    assert message.startswith(f"{weights}: refused: the file is a pickle holding more than tensors ({detail}),"
                              " which can run code when loaded")
    assert "torch.load(weights_only=True)" in message and "ran nothing from it" in message
    # the payload is real: an unrestricted load runs it
    if how == "torch.save":
        torch.load(weights, weights_only=False)
    else:
        pickle.loads(weights.read_bytes())
    assert marker.exists()


def test_predict_command_refuses_the_pickle_in_one_line(tmp_path, capsys):
    from medseg.predict import main as predict_main

    marker = tmp_path / "marker"
    bundle = _foreign_bundle(tmp_path / "bundle", weights={"payload": CreatesMarker(marker)})
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), tmp_path / "in" / "case.nii.gz")
    code = predict_main(["--bundle", str(bundle), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                         "--device", "cpu", "--trust"])  # the inputs are checked first, then the bundle is loaded
    err = capsys.readouterr().err.strip()
    assert code == 2 and not marker.exists()
    assert len(err.splitlines()) == 1 and "refused: the file is a pickle holding more than tensors" in err


def test_damaged_weights_give_one_line(tmp_path):
    bundle = _foreign_bundle(tmp_path / "bundle")
    (bundle / "models" / "model.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(MedsegError, match=r"model.pt: cannot be loaded as plain weights \(") as err:
        load_bundle(bundle, CPU, trust=True)
    assert "\n" not in str(err.value)


def _zip_of(bundle: Path, archive: Path, top: str = "", extra: list[tuple[zipfile.ZipInfo, bytes]] = ()) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(bundle.rglob("*")):
            if path.is_file():
                zf.write(path, f"{top}{path.relative_to(bundle).as_posix()}")
        for info, data in extra:
            zf.writestr(info, data)
    return archive


@pytest.mark.parametrize("top", ["", "tiny_bundle/"])
def test_bundle_zip_is_extracted_and_loaded(tmp_path, top, clean_sys_path):
    bundle = _foreign_bundle(tmp_path / "bundle")
    expected = torch.load(bundle / "models" / "model.pt", weights_only=True)
    archive = _zip_of(bundle, tmp_path / "tiny.zip", top)
    loaded = load_bundle(archive, CPU, trust=True)
    state = loaded.network.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)
    root = Path(loaded.parser["bundle_root"])
    assert (root / "configs" / "metadata.json").is_file() and root.name == (top.strip("/") or root.name)
    assert archive.read_bytes() == _zip_of(bundle, tmp_path / "again.zip", top).read_bytes()  # input untouched
    del loaded


def _symlink_member(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix
    info.external_attr = (0o120777 << 16)
    return info, target.encode()


@pytest.mark.parametrize(("member", "why"), [
    (zipfile.ZipInfo("../outside.txt"), "points outside the bundle ('..' or an absolute path)"),
    (zipfile.ZipInfo("configs/../../outside.txt"), "points outside the bundle ('..' or an absolute path)"),
    (zipfile.ZipInfo("/tmp/medseg_absolute.txt"), "points outside the bundle ('..' or an absolute path)"),
    (zipfile.ZipInfo("configs\\..\\..\\outside.txt"), "has a backslash, a NUL or a drive letter in its name"),
    (_symlink_member("models/link.pt", "../../../etc/passwd")[0], "is a symbolic link; bundle zips hold plain files"),
])
def test_hostile_zip_members_are_refused_before_extraction(tmp_path, monkeypatch, member, why):
    bundle = _foreign_bundle(tmp_path / "bundle")
    data = b"../../../etc/passwd" if member.external_attr else b"overwritten"
    archive = _zip_of(bundle, tmp_path / "hostile.zip", extra=[(member, data)])
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr("tempfile.tempdir", None)
    with pytest.raises(MedsegError) as err:
        load_bundle(archive, CPU, trust=True)
    assert str(err.value) == f"{archive}: refused: member '{member.filename}' {why}; nothing was extracted"
    assert not (tmp_path / "outside.txt").exists() and not Path("/tmp/medseg_absolute.txt").exists()
    assert not any(p.is_file() for p in scratch.rglob("*"))  # nothing extracted, the temporary folder removed


def test_symlink_out_of_a_bundle_folder_is_refused(tmp_path):
    bundle = _foreign_bundle(tmp_path / "bundle")
    outside = tmp_path / "elsewhere.pt"
    (bundle / "models" / "model.pt").rename(outside)
    (bundle / "models" / "model.pt").symlink_to(Path("..") / ".." / "elsewhere.pt")
    with pytest.raises(MedsegError) as err:
        load_bundle(bundle, CPU, trust=True)
    assert str(err.value) == (f"{bundle}: refused: models/model.pt is a symbolic link to ../../elsewhere.pt, outside"
                              " the bundle; copy the file into the bundle instead of linking to it")
    # a link that stays inside the bundle is fine
    (bundle / "models" / "model.pt").unlink()
    outside.rename(bundle / "models" / "weights.pt")
    (bundle / "models" / "model.pt").symlink_to("weights.pt")
    (bundle / "configs" / "metadata.json").rename(bundle / "configs" / "meta.json")
    (bundle / "configs" / "metadata.json").symlink_to("meta.json")
    with pytest.raises(MedsegError, match="inference.json runs code"):  # gets past the link check to the trust rule
        load_bundle(bundle, CPU, trust=False)
    # the stable name of versioned bundles is a link to the latest version folder: that is the bundle itself
    stable = tmp_path / "stable"
    stable.symlink_to("bundle", target_is_directory=True)
    with pytest.raises(MedsegError, match="inference.json runs code"):
        load_bundle(stable, CPU, trust=False)
