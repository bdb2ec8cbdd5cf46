"""Every export is kept: bundles/<name>-v<n> folders, bundles/<name> linking the latest, listed by medseg.export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medseg.bundle import versions
from medseg.export import main as export_main


def _meta(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def test_each_export_is_a_new_version_and_the_name_points_at_the_latest(trained, tmp_path: Path, capsys):
    out = tmp_path / "bundles" / "liver_bundle"
    assert export_main([str(trained["run"]), "--out", str(out)]) == 0
    first = (out / "models" / "model.pt").resolve()
    assert export_main([str(trained["run"]), "--out", str(out)]) == 0
    assert out.is_symlink() and out.resolve() == (tmp_path / "bundles" / "liver_bundle-v2").resolve()
    v1, v2 = tmp_path / "bundles" / "liver_bundle-v1", tmp_path / "bundles" / "liver_bundle-v2"
    assert first == (v1 / "models" / "model.pt").resolve() and first.is_file()  # the first is still there
    assert _meta(v1)["version"] == "0.1.0" and _meta(v2)["version"] == "0.2.0"
    assert list(_meta(v2)["changelog"]) == ["0.2.0", "0.1.0"] and list(_meta(v1)["changelog"]) == ["0.1.0"]
    assert "from run run (task 'liver')" in _meta(v2)["changelog"]["0.2.0"]  # the run folder's name, not its path
    assert _meta(v2)["medseg_export"]["run"] == "run"
    a, b = torch.load(v2 / "models" / "model.pt", weights_only=True), torch.load(v1 / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert export_main(["--list", "--dir", str(tmp_path / "bundles")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    dice = json.loads((trained["run"] / "metrics.json").read_text())["liver"]["dice"]
    assert len(lines) == 3 and lines[0].split()[:2] == ["name", "version"]
    assert "liver_bundle-v1" in lines[1] and "0.1.0 " in lines[1] and "(latest)" not in lines[1]
    assert "liver_bundle-v2" in lines[2] and "0.2.0 (latest)" in lines[2] and "  run  " in lines[2]
    assert str(trained["work"]) not in "\n".join(lines)
    assert f"liver {dice:.3f}" in lines[2] and " liver " in lines[2]
    assert export_main(["--list", "--dir", str(tmp_path / "nothing")]) == 2


def test_list_of_one_bundle_shows_its_versions_and_a_file_is_named_as_one(tmp_path: Path, capsys):
    parent = tmp_path / "bundles"
    for name in ("liver-v1", "liver-v2", "other-v1"):
        (parent / name / "configs").mkdir(parents=True)
        (parent / name / "configs" / "metadata.json").write_text(json.dumps({"version": f"0.{name[-1]}.0"}))
    (parent / "liver").symlink_to("liver-v2", target_is_directory=True)
    assert [r["folder"].name for r in versions.list_bundles(parent)] == ["liver-v1", "liver-v2", "other-v1"]
    for given in ("liver", "liver-v1"):  # the stable name or one version: that bundle's versions
        assert [r["folder"].name for r in versions.list_bundles(parent / given)] == ["liver-v1", "liver-v2"]
    assert [r["folder"].name for r in versions.list_bundles(parent / "other-v1")] == ["other-v1"]
    file = tmp_path / "notes.txt"
    file.write_text("x")
    capsys.readouterr()
    assert export_main(["--list", "--dir", str(file)]) == 2
    assert f"--dir {file}: a file, not a folder; give the folder holding the bundles" in capsys.readouterr().err
    assert export_main([str(file)]) == 2
    assert f"{file}: a file, not a folder; give a training run directory" in capsys.readouterr().err
    assert export_main([str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such folder; give a training run directory" in capsys.readouterr().err


def test_run_json_names_the_version_the_run_wrote(trained):
    report = json.loads((trained["run"] / "run.json").read_text())
    assert report["bundle"] == str(trained["bundle"])  # the stable name, which a later training moves on
    assert Path(report["bundle_version"]).name == "liver_ct_segmentation-v1"
    assert Path(report["bundle_version"]) == versions.resolve(trained["bundle"])


def test_the_stable_name_loads_and_runs_on_stock_monai(trained, tmp_path: Path):
    from medseg.bundle.load import load_bundle

    bundle = trained["bundle"]  # bundles/liver_ct_segmentation, a link to liver_ct_segmentation-v1
    assert bundle.is_symlink() and versions.resolve(bundle).name == "liver_ct_segmentation-v1"
    loaded = load_bundle(bundle, torch.device("cpu"))
    assert loaded.name == "liver_ct_segmentation"
    images = tmp_path / "images"
    images.mkdir()
    (images / "case_000.nii.gz").write_bytes((trained["dataset"] / "imagesTr" / "case_000.nii.gz").read_bytes())
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
           "--bundle_root", str(bundle), "--dataset_dir", str(images), "--output_dir", str(tmp_path / "out")]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "case_000_seg.nii.gz").is_file()


def test_a_bundle_folder_from_before_versioning_becomes_version_1(trained, tmp_path: Path):
    import shutil

    parent = tmp_path / "bundles"
    parent.mkdir()
    shutil.copytree(versions.resolve(trained["bundle"]), parent / "liver_bundle")  # a real folder, as medseg wrote it
    before = (parent / "liver_bundle" / "models" / "model.pt").read_bytes()
    assert export_main([str(trained["run"]), "--out", str(parent / "liver_bundle")]) == 0
    assert (parent / "liver_bundle-v1" / "models" / "model.pt").read_bytes() == before
    assert (parent / "liver_bundle").resolve().name == "liver_bundle-v2"
    assert [r["folder"].name for r in versions.list_bundles(parent)] == ["liver_bundle-v1", "liver_bundle-v2"]


@pytest.mark.slow
def test_two_exports_finishing_at_once_never_mix(trained, tmp_path: Path):
    out = tmp_path / "bundles" / "liver_bundle"
    cmd = [sys.executable, "-m", "medseg.export", str(trained["run"]), "--out", str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    from medseg.bundle import verify_bundle

    names = sorted(p.name for p in out.parent.iterdir() if not p.name.startswith("."))
    assert names == ["liver_bundle", "liver_bundle-v1", "liver_bundle-v2"]  # no temporary folder left
    for n in (1, 2):
        folder = out.parent / f"liver_bundle-v{n}"
        assert _meta(folder)["version"] == f"0.{n}.0"
        verify_bundle(folder)  # each one whole: MONAI's metadata and network checks pass
        extra = torch.jit.load(str(folder / "models" / "model.ts"), _extra_files={"metadata.json": ""}, map_location="cpu")
        assert extra is not None
    assert out.resolve().name == "liver_bundle-v2"


def test_a_run_is_recorded_by_name_whatever_path_names_it(trained, tmp_path: Path, monkeypatch):
    """metadata.json and the change log name the run without its absolute path (user and site names stay out of a
    shared bundle), the same whether the export was given a relative or an absolute path."""
    monkeypatch.chdir(trained["run"].parent)
    out = tmp_path / "bundles" / "relative"
    assert export_main([trained["run"].name, "--out", str(out)]) == 0
    text = (out / "configs" / "metadata.json").read_text()
    assert _meta(out)["medseg_export"]["run"] == "run" and str(trained["work"]) not in text



def test_export_refuses_an_unwritable_target_and_a_bundle_name_that_is_a_path(trained, tmp_path: Path, capsys,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert export_main([str(trained["run"]), "--out", "/proc/liver"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out /proc/liver: cannot write in /proc" in err and "Traceback" not in err
    for name in ("../../escaped", "a/b", ".."):
        assert export_main([str(trained["run"]), "--set", f"bundle.name={name}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "'bundle.name' must be a plain folder name" in err, err
    assert not (tmp_path / "bundles").exists() and not (tmp_path.parent / "escaped").exists()
