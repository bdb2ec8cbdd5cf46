"""The augmentation preview draws 3D patches as axial slices in the radiological view from the pipeline's
``preprocessing.orientation`` (the patches' axis directions), as the validation overlays do from the affine."""

from __future__ import annotations

import numpy as np

from medseg.evaluation.figures import _axial, codes_affine


def test_codes_affine_is_the_lps_affine_of_the_orientation():
    assert np.array_equal(codes_affine("LPS"), np.eye(4))
    assert np.array_equal(codes_affine("RAS"), np.diag([-1.0, -1.0, 1.0, 1.0]))
    turned = codes_affine("SLP")  # axis 0 to superior, 1 to the left, 2 to posterior
    assert np.array_equal(turned[:3, :3], [[0, 1, 0], [0, 0, 1], [1, 0, 0]])


def test_a_ras_patch_turns_to_the_radiological_view():
    patch = np.zeros((6, 5, 4), np.float32)  # RAS: axis 0 to the right, 1 to anterior, 2 to superior
    patch[-1, -1, 0] = 1.0  # the most right, most anterior, most inferior voxel
    (turned,), aspect = _axial(codes_affine("RAS"), patch)
    assert turned.shape == (6, 5, 4) and aspect == 1.0
    # drawn as turned[..., z].T from the top: row 0 is anterior, column 0 the patient's right, slice 0 inferior
    assert turned[0, 0, 0] == 1.0 and turned.sum() == 1.0
    (same,), _ = _axial(codes_affine("LPS"), patch)
    assert np.array_equal(same, patch)
