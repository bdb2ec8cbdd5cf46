"""Which cases ``--input FOLDER`` holds for DICOM laid out as it comes off a CD or an archive: series folders under
patient and study folders beside a DICOMDIR (pydicom-data's real ``dicomdirtests``), loose files beside series
folders, and a series with its saved DICOM SEG in a sub-folder. Case names become output file names, so a folder
named by the patient's ID or name is not carried into them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.data.dicom import read_dicom, write_series
from medseg.errors import MedsegError
from medseg.workflows.predict import find_inputs
from tests.data.test_dicom_io import oblique_affine, volume

CD = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"


@pytest.fixture
def cd():
    assert (CD / "DICOMDIR").is_file(), f"{CD}: pydicom's wheel ships its test files; reinstall pydicom"
    return CD


def test_series_folders_under_a_dicomdir_are_one_case_each_and_patient_ids_leave_the_names(cd):
    cases = find_inputs(cd)  # was: DICOMDIR-bigEnd made the CD's top folder one series, refused
    found = {name: path.relative_to(cd).as_posix() for name, path in cases}
    assert found == {
        "patient1_CR1": "77654033/CR1", "patient1_CR2": "77654033/CR2", "patient1_CR3": "77654033/CR3",
        "patient1_CT2": "77654033/CT2",  # 77654033 is these files' PatientID
        "98892001_CT2N": "98892001/CT2N", "98892001_CT5N": "98892001/CT5N",  # a folder name that is no identifier
        "98892003_MR1": "98892003/MR1", "98892003_MR2": "98892003/MR2", "98892003_MR700": "98892003/MR700",
        "TINY_ALPHA_PT000000_ST000000_SE000000": "TINY_ALPHA/PT000000/ST000000/SE000000",
    }
    assert pydicom.dcmread(cd / "77654033" / "CT2" / "17136", stop_before_pixels=True).PatientID == "77654033"
    assert all("doe" not in name.lower() and "77654033" not in name for name in found)


def test_a_patient_name_folder_is_a_stand_in(tmp_path):
    write_series(tmp_path / "in" / "Doe^Jane" / "CT", volume(1), oblique_affine())
    for ds_path in (tmp_path / "in" / "Doe^Jane" / "CT").iterdir():
        ds = pydicom.dcmread(ds_path)
        ds.PatientName, ds.PatientID = "Doe^Jane", "X123"
        ds.save_as(ds_path)
    write_series(tmp_path / "in" / "X123" / "MR", volume(2), oblique_affine())
    for ds_path in (tmp_path / "in" / "X123" / "MR").iterdir():
        ds = pydicom.dcmread(ds_path)
        ds.PatientID = "X123"
        ds.save_as(ds_path)
    names = [name for name, _ in find_inputs(tmp_path / "in")]
    assert names == ["patient1_CT", "patient2_MR"]


def test_loose_files_beside_series_folders_are_one_line(cd, tmp_path):
    shutil.copytree(cd / "77654033" / "CT2", tmp_path / "in" / "CT2")
    shutil.copytree(cd / "98892001" / "CT2N", tmp_path / "in" / "CT2N")
    shutil.copy(cd / "77654033" / "CR1" / "6154", tmp_path / "in" / "6154")
    with pytest.raises(MedsegError, match=r"in: 1 DICOM image file\(s\) at its top \(6154\) beside series folders "
                                          r"\(CT2, CT2N\): give one series folder as --input"):
        find_inputs(tmp_path / "in")
    shutil.copy(cd / "DICOMDIR", tmp_path / "in2_DICOMDIR")  # a DICOMDIR index beside them is not a loose image
    (tmp_path / "in" / "6154").unlink()
    shutil.copy(cd / "DICOMDIR-reordered", tmp_path / "in" / "INDEX")
    assert [n for n, _ in find_inputs(tmp_path / "in")] == ["CT2", "CT2N"]


def test_a_series_with_its_saved_seg_in_a_sub_folder_is_one_case(tmp_path):
    from medseg.data.dicom_seg import write_dicom_seg

    write_series(tmp_path / "ct", volume(3), oblique_affine(), series_uid="1.2.3.41")
    ct = read_dicom(tmp_path / "ct")
    (tmp_path / "ct" / "corrected").mkdir()
    write_dicom_seg((ct.array > np.median(ct.array)).astype(np.uint8), ct.affine_ras, tmp_path / "ct",
                    tmp_path / "ct" / "corrected" / "mask.dcm", {1: "hot"}, "test-model", "0.1")
    assert find_inputs(tmp_path / "ct") == [("ct", tmp_path / "ct")]
