"""Writing a DICOM SEG shows no patient identifier: highdicom's warning about a one-component PatientName
("DOE JANE", "CQ500-CT-310": common in real data) printed the name itself into the console and server logs."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom

from medseg.data.dicom import write_series
from medseg.data.dicom_seg import write_dicom_seg


def test_seg_of_a_one_component_patient_name_warns_nothing_that_names_the_patient(tmp_path, capsys):
    volume = np.full((8, 6, 4), 40.0)
    lps = np.diag([1.5, 1.5, 2.0, 1.0])
    write_series(tmp_path / "series", volume, lps, patient_name="DOEJANE", patient_id="MRN4711")
    labels = np.zeros((8, 6, 4), np.uint8)
    labels[2:5, 2:4, 1:3] = 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = write_dicom_seg(labels, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, tmp_path / "series",
                              tmp_path / "seg.dcm", {1: "liver"}, "model", "0")
    shown = " ".join(str(w.message) for w in caught) + capsys.readouterr().err
    assert "DOEJANE" not in shown and "MRN4711" not in shown, shown
    assert str(pydicom.dcmread(out).PatientName) == "DOEJANE"  # the SEG itself keeps the patient module
