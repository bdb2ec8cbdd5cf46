"""medseg.fileio: folders replaced whole, or not at all."""

from __future__ import annotations

import pytest

from medseg.fileio import atomic_dir


def test_atomic_dir_replaces_the_folder_on_success_and_leaves_it_on_failure(tmp_path):
    root = tmp_path / "sample"
    root.mkdir()
    (root / "half_written.txt").write_text("old")
    with atomic_dir(root) as tmp:
        assert tmp.parent == tmp_path and tmp != root
        (tmp / "dataset.json").write_text("{}")
    assert sorted(p.name for p in root.iterdir()) == ["dataset.json"]
    with pytest.raises(RuntimeError):
        with atomic_dir(root) as tmp:
            (tmp / "dataset.json").write_text("partial")
            raise RuntimeError("killed half-way")
    assert (root / "dataset.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample"]  # no temporary folder left
