"""medseg.predict writes a volume's mask in the values its dataset's label files store: a plan renumbers label
files stored as 0/1/4 (or 0/255) to 0..K-1 for the network, with ``data.label_map``; the masks came back as
0..K-1, not comparable with the references as they are (the picture outputs were mapped back already)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch

from medseg.bundle.load import LoadedBundle
from medseg.config import load_config
from medseg.inference import build_chain
from medseg.transforms import input_channels
from tests.conftest import FAST, synthetic_case


class ThreeClassNet(torch.nn.Module):
    """Fixed 1x1 logits on the windowed CT x: background 0, liver 40x - 20, tumour 10x - 3: background in the
    synthetic case's -80 HU (x 0.15), tumour in its 40 HU (0.45), liver in its 110 HU (0.63)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(in_channels, 3, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1, 0], self.conv.weight[2, 0] = 40.0, 10.0
            self.conv.bias.copy_(torch.tensor([0.0, -20.0, -3.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _bundle(label_map: str | None) -> LoadedBundle:
    cfg = load_config("liver", FAST + ["training.device=cpu"] + ([f"data.label_map={label_map}"] if label_map else []))
    return LoadedBundle("three", cfg, ThreeClassNet(input_channels(cfg)).eval(),
                        {0: "background", 1: "liver", 2: "tumour"}, build_chain(cfg))


def test_a_renumbered_tasks_masks_come_back_in_the_files_values(tmp_path):
    from medseg.workflows.predict import predict_one

    image, _, affine = synthetic_case()
    src = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), src)
    predict_one(_bundle(None), src, tmp_path / "plain_seg.nii.gz", torch.device("cpu"))
    predict_one(_bundle("{0: 0, 1: 1, 4: 2}"), src, tmp_path / "mapped_seg.nii.gz", torch.device("cpu"))  # tumour stored as 4
    a = np.asarray(nib.load(tmp_path / "plain_seg.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "mapped_seg.nii.gz").dataobj)
    assert set(np.unique(a).tolist()) == {0, 1, 2}  # the network's values, all three present
    assert np.array_equal(b, np.where(a == 2, 4, a))  # the same mask, tumour as the files store it
    assert nib.load(tmp_path / "mapped_seg.nii.gz").get_data_dtype() == np.uint8


def test_a_saved_correction_is_in_the_files_values_too(tmp_path):
    """medseg.serve's Save writes the correction that becomes a training label: in the stored values as well."""
    from medseg.workflows.interact import CaseSession

    image, _, affine = synthetic_case()
    src = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), src)
    session = CaseSession(_bundle("{0: 0, 1: 1, 4: 2}"), "ct", src)
    assert 2 in session.labels
    session.save(tmp_path / "out")
    saved = np.asarray(nib.load(tmp_path / "out" / "ct_seg.nii.gz").dataobj)
    assert np.array_equal(saved, np.where(session.labels == 2, 4, session.labels))
