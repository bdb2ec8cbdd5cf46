"""--int8 on a bundle whose INT8 model the export refused: the line says so, with the loss and the remedy that
works (a larger bundle.int8_max_dice_loss), not the same export again (its calibration is the same every time)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.errors import MedsegError
from medseg.inference.runtimes import build_engine
from tests.inference.test_deploy import small_network


def test_int8_refused_at_export_names_the_loss_and_the_allowed_loss(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "models").mkdir()
    record = {"file": None, "dice_loss": {"nucleus": 0.0121}, "max_dice_loss": 0.005, "refused": True,
              "dice": {"nucleus": 0.9166}, "fp32_dice": {"nucleus": 0.9287}}
    meta = {"medseg_export": {"run": "/data/runs/nuclei/3"}, "medseg_int8": record}
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps(meta))
    net = small_network("unet", 2, 16)
    with pytest.raises(MedsegError) as caught:
        build_engine("openvino", net, tmp_path / "models", int8=True)
    line = str(caught.value)
    assert "refused at export" in line and "'nucleus' fell by 0.0121" in line and "exported without INT8" not in line
    assert line.endswith("medseg.export /data/runs/nuclei/3 --int8 --set bundle.int8_max_dice_loss=...")
