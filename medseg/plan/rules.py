"""The planning rules: small functions from the fingerprint (and the measured machine) to one decision each,
returned as :class:`Decision` (the value and a one-line reason that goes into the YAML, ``plan.json``,
``train.log`` and MLflow).

The rules are nnU-Net's (Isensee et al., Nature Methods 2021) where it has one, with two departures: the
patch, batch and schedule are fitted to a measured step time and a time budget (nnU-Net fits GPU memory and
trains 1000 x 250 iterations), and widths start at 16 on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: an axis whose spacing is more than this times the finest is "coarse" (nnU-Net's anisotropy threshold)
ANISOTROPY = 3.0
#: a coarse axis with fewer resampled slices than this (median) is planned as 2D slices
MIN_COARSE_SLICES = 16
#: the bottleneck is pooled down to this many voxels per axis at least (nnU-Net: 4)
MIN_BOTTLENECK = 4
MAX_LEVELS = 5  # pooling steps (6 resolution levels at most, as nnU-Net's 3D full-res)
#: patch voxel budget to start from: the largest patch a step time can afford is searched below it
START_VOXELS = {("cpu", 3): 64 * 96 * 96, ("cuda", 3): 128 * 128 * 128, ("cpu", 2): 256 * 256, ("cuda", 2): 512 * 512}
#: fewest training iterations a plan may leave in the budget before the patch shrinks (then 2D slices)
MIN_ITERATIONS = 400
MAX_EPOCHS, MAX_ITERATIONS = 1000, 250  # nnU-Net's schedule: the cap for huge budgets
OVERHEAD = 0.15  # share of the budget kept for start-up, the final evaluation and the export
VAL_SHARE = 0.15  # at most this share of the budget goes to validation rounds
MAX_VALIDATIONS = 10


@dataclass(frozen=True)
class Decision:
    value: Any
    reason: str


def _fmt(values: Any) -> str:
    return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def unit(fp: dict[str, Any]) -> str:
    """The unit of the fingerprint's spacings and extents: ``"mm"``, or ``"px"`` for pictures that store no
    pixel size (PNG, JPEG, TIFF without resolution: :func:`medseg.plan.fingerprint.spacing_unit`)."""
    return fp.get("spacing_unit", "mm")


# ---- spacing and dimensionality


def coarse_axes(spacing: list[float]) -> list[int]:
    finest = min(spacing)
    return [a for a, s in enumerate(spacing) if s > ANISOTROPY * finest]


def target_spacing(fp: dict[str, Any]) -> Decision:
    """Median spacing per axis; an axis more than 3x coarser than the finest takes the 10th percentile of
    that axis's spacings instead (nnU-Net: the resampled thick-slice axis should not get coarser than most
    cases are, as the median would do for a mixed thick/thin set)."""
    median, p10 = list(fp["median_spacing"]), list(fp["spacing_p10"])
    coarse = coarse_axes(median)
    u = unit(fp)
    if not coarse:
        return Decision(median, f"median spacing of {fp['n_cases']} cases ({_fmt(median)} {u}); no axis is more"
                                f" than {ANISOTROPY:g}x coarser than the finest")
    out = [p10[a] if a in coarse else median[a] for a in range(len(median))]
    axes = ", ".join(str(a) for a in coarse)
    return Decision(out, f"median {_fmt(median)} {u}; axis {axes} is more than {ANISOTROPY:g}x coarser than the"
                         f" finest (anisotropy {fp['anisotropy']:g}), so it takes the 10th percentile"
                         f" ({_fmt([p10[a] for a in coarse])} {u}) as nnU-Net does")


COARSEN = 1.5  # the factor a CPU budget may coarsen the target spacing by before the patch shrinks


def coarser_spacing(spacing: Decision, iterations: int, budget_minutes: float, unit: str = "mm") -> Decision:
    """Budget rule (not nnU-Net's): when the budget fits fewer than ``MIN_ITERATIONS`` steps at the median
    spacing, the fine axes are coarsened 1.5x (never past the coarsest axis), so a patch of the same mm
    context needs 3.4x fewer voxels before the patch itself shrinks (``pipelines/liver.yaml``'s 1.5 mm)."""
    values = list(spacing.value)
    coarsest = max(values)
    fine = [s * COARSEN for s in values] if not coarse_axes(values) else \
        [s if s == coarsest else min(coarsest, s * COARSEN) for s in values]
    fine = [round(s, 4) for s in fine]
    return Decision(fine, f"{_fmt(fine)} {unit}: {spacing.reason}; coarsened {COARSEN:g}x as the budget fits only"
                          f" {iterations} (< {MIN_ITERATIONS}) iterations in {budget_minutes:g} min there")


def resampled_shape(fp: dict[str, Any], spacing: list[float]) -> list[int]:
    """Median image shape after resampling to ``spacing``."""
    shapes = np.array([[n * s / t for n, s, t in zip(e["shape"], e["spacing"], spacing)] for e in fp["cases"]])
    return [max(1, int(round(float(v)))) for v in np.median(shapes, axis=0)]


def dimensionality(fp: dict[str, Any], spacing: list[float]) -> Decision:
    """``"2d"`` for 2D images; ``"2d_slices"`` (a 2D network on slices across the coarse axis) when an axis is
    coarse and holds fewer than 16 resampled slices; ``"3d"`` otherwise (anisotropic strides where an axis is
    coarse). The tiny-budget switch to slices is :func:`fit_to_budget`'s."""
    if fp["dims"] == 2:
        return Decision("2d", "the images are 2D")
    coarse = coarse_axes(spacing)
    shape = resampled_shape(fp, spacing)
    u = unit(fp)
    if coarse and min(shape[a] for a in coarse) < MIN_COARSE_SLICES:
        a = coarse[0]
        return Decision("2d_slices", f"axis {a} is {spacing[a]:g} {u} against {min(spacing):g} {u} in-plane with a"
                                     f" median {shape[a]} slices (< {MIN_COARSE_SLICES}): too few for 3D"
                                     " context, so a 2D network on slices")
    if coarse:
        return Decision("3d", f"3D with anisotropic strides: axis {coarse[0]} is coarse ({spacing[coarse[0]]:g} {u})"
                              f" but holds a median {shape[coarse[0]]} slices (>= {MIN_COARSE_SLICES})")
    return Decision("3d", f"3D volumes, anisotropy {fp['anisotropy']:g} <= {ANISOTROPY:g}")


def slice_axis(spacing: list[float]) -> int:
    """The axis slices are taken across: the coarsest (axial, 2, when all are equal)."""
    return int(np.argmax(np.asarray(spacing) - 1e-6 * (np.arange(len(spacing)) != 2)))


# ---- patch and topology


def pooling(patch: list[int], spacing: list[float], max_levels: int = MAX_LEVELS) -> list[list[int]]:
    """Strides per level and axis (:func:`nnunet_pooling`), without the deepest levels whose total stride
    would not divide every patch axis (the network takes one input multiple for all axes)."""
    strides = nnunet_pooling(patch, spacing, max_levels)
    while len(strides) > 1 and any(p % max(total_stride(strides, len(patch))) for p in patch):
        strides = strides[:-1]
    return strides


def nnunet_pooling(patch: list[int], spacing: list[float], max_levels: int = MAX_LEVELS) -> list[list[int]]:
    """Strides per level and axis, nnU-Net's way: an axis is halved while it stays at least
    ``MIN_BOTTLENECK`` voxels and its spacing is at most 2x the finest current spacing (so a coarse axis
    waits until the others have caught up)."""
    size, sp, strides = list(patch), list(spacing), []
    for _ in range(max_levels):
        finest = min(sp)
        step = [2 if size[a] // 2 >= MIN_BOTTLENECK and sp[a] <= 2 * finest else 1 for a in range(len(size))]
        if all(s == 1 for s in step):
            break
        strides.append(step)
        size = [n // s for n, s in zip(size, step)]
        sp = [x * s for x, s in zip(sp, step)]
    return strides


def total_stride(strides: list[list[int]], dims: int) -> list[int]:
    return [int(np.prod([s[a] for s in strides])) if strides else 1 for a in range(dims)]


def _round(n: float, multiple: int) -> int:
    return max(multiple, int(n // multiple) * multiple)


def patch_size(fp: dict[str, Any], spacing: list[float], voxels: int, dims: int,
               axes: list[int] | None = None) -> Decision:
    """The patch: the same extent in mm on every axis (sizes proportional to 1/spacing), scaled to ``voxels``,
    each axis capped at the median resampled shape (what a cap frees goes to the other axes), then rounded
    down to a multiple of the network's total stride (one pooling level fewer where rounding would cut an
    axis by more than a quarter). ``axes``: the image axes the patch spans (2D slices:
    the two in-plane axes)."""
    shape_all = resampled_shape(fp, spacing)
    axes = list(range(len(shape_all))) if axes is None else axes
    shape = [shape_all[a] for a in axes]
    sp = [spacing[a] for a in axes]
    inv = np.array([1.0 / s for s in sp])
    capped = [False] * dims
    size = np.zeros(dims)
    for _ in range(dims):
        free = [a for a in range(dims) if not capped[a]]
        if not free:
            break
        budget = voxels / np.prod([size[a] for a in range(dims) if capped[a]] or [1.0])
        scale = (budget / np.prod(inv[free])) ** (1.0 / len(free))
        for a in free:
            size[a] = inv[a] * scale
        over = [a for a in free if size[a] > shape[a]]
        if not over:
            break
        for a in over:
            size[a], capped[a] = shape[a], True
    patch = [int(max(MIN_BOTTLENECK * 2, s + 1e-6)) for s in size]  # 1e-6: a cube root of 128**3
    full = nnunet_pooling(patch, sp)
    for levels in range(len(full), 0, -1):  # a level fewer rather than an axis rounded down by over a quarter
        multiple = max(total_stride(full[:levels], dims))
        rounded = [_round(p, multiple) for p in patch]
        # nor rounded up: an axis shorter than the multiple (26 slices of 5 mm against 32) would grow past the
        # image it was capped at, and every patch would be part padding
        if all(0.75 * p <= r <= p for r, p in zip(rounded, patch)):
            break
    patch = rounded
    multiple = max(total_stride(pooling(patch, sp), dims))
    cover = float(np.prod([min(1.0, p / n) for p, n in zip(patch, shape)]))
    u = unit(fp)
    return Decision(patch, f"{_fmt(patch)} voxels ({_fmt([round(p * s) for p, s in zip(patch, sp)])} {u}): equal {u}"
                           f" per axis within {voxels:,} voxels, capped at the median resampled image"
                           f" {_fmt(shape)}, multiples of {multiple}; {cover:.0%} of the median image")


def topology(patch: list[int], spacing: list[float], family: str, device: str, aliases: dict[str, str],
             multiple_of: Any = None) -> Decision:
    """Strides per level and axis from :func:`pooling` (bottleneck 4-8 voxels), widths doubling from 16 on a
    CPU (32 on a GPU) up to 320, for networks taking ``strides`` (resunet, attention_unet); networks taking
    only ``channels`` get as many levels as the smallest axis allows; others keep their own."""
    strides = pooling(patch, spacing)
    base = 16 if device == "cpu" else 32
    bottleneck = [p // t for p, t in zip(patch, total_stride(strides, len(patch)))]
    if "strides" in aliases:
        channels = [min(320, base * 2 ** i) for i in range(len(strides) + 1)]
        flat = [s[0] if len(set(s)) == 1 else list(s) for s in strides]
        aniso = any(len(set(s)) > 1 for s in strides)
        why = ""
        if aniso:
            why = (" (anisotropic strides: the coarse axis is pooled only once the others reach its spacing)"
                   if coarse_axes(list(spacing)) else
                   f" (per-axis strides: a short axis stops at >= {MIN_BOTTLENECK} voxels while the others go on)")
        return Decision({"channels": channels, "strides": flat},
                        f"{len(strides)} poolings to a {_fmt(bottleneck)} bottleneck{why}; widths {base}"
                        f" doubling to {channels[-1]}")
    if "channels" in aliases:
        levels = min(len(strides), int(math.log2(max(1, min(patch) // MIN_BOTTLENECK))))
        channels = [min(320, base * 2 ** i) for i in range(levels + 1)]
        return Decision({"channels": channels}, f"{family} pools every axis alike: {levels} poolings (the smallest"
                                                f" axis, {min(patch)} voxels, down to >= {MIN_BOTTLENECK});"
                                                f" widths {base} doubling to {channels[-1]}")
    return Decision({}, f"{family} has no depth or width shorthand; its own defaults")


# ---- schedule from measured times


def schedule(step_s: float, data_s: float, val_s: float, startup_s: float, budget_minutes: float) -> Decision:
    """Epochs x iterations filling the budget: ``OVERHEAD`` of it kept for start-up and the final evaluation
    (or the measured start-up when larger), up to ``MAX_VALIDATIONS`` validation rounds within ``VAL_SHARE``,
    the rest as training iterations of the measured ``step_s + data_s``; about 40 epochs, 10-250 iterations
    each, capped at nnU-Net's 1000 x 250."""
    budget = budget_minutes * 60.0
    per_iter = max(1e-4, step_s + data_s)
    reserve = max(OVERHEAD * budget, startup_s)
    n_val = MAX_VALIDATIONS if val_s <= 0 else max(1, min(MAX_VALIDATIONS, int(VAL_SHARE * budget / val_s)))
    train_s = max(0.0, budget - reserve - n_val * val_s)
    total = int(train_s / per_iter)
    iterations = int(min(MAX_ITERATIONS, max(10, total // 40)))
    epochs = int(min(MAX_EPOCHS, max(1, total // iterations)))
    val_every = max(1, math.ceil(epochs / n_val))
    capped = " (capped at nnU-Net's 1000 x 250)" if epochs == MAX_EPOCHS else ""
    return Decision({"epochs": epochs, "iterations_per_epoch": iterations, "val_every": val_every,
                     "total_iterations": total, "train_seconds": round(train_s, 1)},
                    f"{epochs} x {iterations} iterations{capped}: {train_s / 60:.1f} of {budget_minutes:g} min"
                    f" at a measured {step_s:.3f} s/step + {data_s:.3f} s data; validation every {val_every}"
                    f" epoch(s) (~{val_s:.1f} s each), {reserve / 60:.1f} min kept for start-up and final evaluation")


def batch_size(dims: int, device: str, peak_bytes_per_sample: float = 0.0, memory_bytes: float = 0.0) -> Decision:
    """2 for 3D on a CPU (nnU-Net's 3D batch; batch norm needs 2); 2D 8 on a CPU; on a GPU as many as fit
    60% of its memory at the measured peak per sample (2-16 for 3D, up to 64 for 2D)."""
    if device != "cuda" or peak_bytes_per_sample <= 0 or memory_bytes <= 0:
        n = 2 if dims == 3 else 8
        return Decision(n, f"{n}: the CPU's step time grows with the batch, so the smallest batch norm works with"
                           if dims == 3 else f"{n}: 2D slices are cheap; 8 per step on a CPU")
    cap = 16 if dims == 3 else 64
    n = int(max(2, min(cap, 0.6 * memory_bytes // peak_bytes_per_sample)))
    return Decision(n, f"{n}: 60% of {memory_bytes / 2**30:.0f} GiB GPU memory at a measured"
                       f" {peak_bytes_per_sample / 2**20:.0f} MiB per sample (cap {cap})")


# ---- intensity, crops, augmentation, post-processing


def intensity(fp: dict[str, Any], modality: str) -> dict[str, Decision]:
    """CT: a window from the foreground's 0.5-99.5 HU percentiles (stacked per-class windows, one input
    channel each, when the narrowest class's range is under a quarter of the foreground's, e.g. liver and bone); MR: z-score over the non-zero region;
    microscopy/XR: 0.5-99.5 percentile scaling."""
    if modality == "CT":
        fg = fp["foreground_intensity"][0]
        lo, hi = round(fg["p0.5"]), round(fg["p99.5"])
        classes = {n: c["intensity"] for n, c in fp["classes"].items() if c["intensity"]["n"]}
        windows = {n: (round(c["p0.5"]), round(c["p99.5"])) for n, c in classes.items()}
        narrowest = min((w[1] - w[0] for w in windows.values()), default=hi - lo)
        if len(windows) > 1 and narrowest < 0.25 * (hi - lo):
            stacked = [{"min": w[0], "max": w[1]} for w in list(windows.values())[:3]]
            return {"preprocessing.intensity": Decision("window", "CT: windows in HU"),
                    "preprocessing.window": Decision(stacked, "stacked windows, one input channel each: one"
                                                     f" {lo}..{hi} HU window would leave the narrowest class"
                                                     f" ({narrowest} HU) under a quarter of the range: "
                                                     + ", ".join(f"{n} {w[0]}..{w[1]}" for n, w in windows.items()))}
        return {"preprocessing.intensity": Decision("window", "CT: a window in HU, clipped and scaled to [0, 1]"),
                "preprocessing.window": Decision({"min": lo, "max": hi},
                                                 f"{lo}..{hi} HU: the foreground's 0.5-99.5 percentiles"
                                                 f" (median {fg['p50']:.0f}, mean {fg['mean']:.0f},"
                                                 f" std {fg['std']:.0f} HU)")}
    if modality == "MR":
        return {"preprocessing.intensity": Decision("zscore", "MR: no absolute scale; z-score per image"),
                "preprocessing.zscore.region": Decision("nonzero", "over the non-zero (head/body) region, as"
                                                        " nnU-Net does for MR")}
    return {"preprocessing.intensity": Decision("percentile", f"{modality}: no absolute scale; 0.5-99.5"
                                                " percentiles per image scaled to [0, 1]"),
            "preprocessing.percentile": Decision({"lower": 0.5, "upper": 99.5}, "robust to hot pixels")}


def crop(fp: dict[str, Any]) -> Decision:
    """Label-balanced crops; the foreground:background ratio from the smallest class's voxel share: 1 when
    every class fills >= 10% of the images (random patches hit it anyway), 2 from 0.1%, 3 below."""
    shares = {n: c["median_share"] for n, c in fp["classes"].items()}
    smallest = min(shares, key=shares.get)
    share = shares[smallest]
    ratio = 1.0 if share >= 0.1 else 2.0 if share >= 0.001 else 3.0
    return Decision({"mode": "balanced", "pos_neg_ratio": ratio},
                    f"balanced crops at {ratio:g}:1 foreground: the smallest class ({smallest}) fills a median"
                    f" {share:.2%} of an image")


def augmentation(modality: str, mode: str) -> Decision:
    """nnU-Net's ranges: rotation +-30 deg and scale 0.7-1.4 for isotropic 3D; +-15 deg for 3D with a coarse
    axis and for 2D slices of CT/MR; a full turn for microscopy (no up in a micrograph); elastic deformation
    only in 2D microscopy/XR (U-Net's own augmentation), off in 3D as in nnU-Net."""
    micro = modality in ("microscopy", "XR")
    rotate = 180.0 if micro and mode == "2d" else 30.0 if mode == "3d" else 15.0
    elastic = 0.3 if micro and mode == "2d" else 0.0
    values = {"rotate_deg": rotate, "scale": [0.7, 1.4], "elastic": {"prob": elastic}}
    return Decision(values, f"rotation +-{rotate:g} deg, scale 0.7-1.4, elastic p={elastic:g} for {modality}"
                            f" {mode}")


def anisotropic_rotation(values: dict[str, Any], coarse: bool) -> dict[str, Any]:
    return {**values, "rotate_deg": 15.0} if coarse else values


def post_processing(fp: dict[str, Any]) -> Decision:
    """Keep-largest-component is decided on the validation predictions after training (nnU-Net measures it
    per class); before that the plan leaves it off and names the candidates (one component per case)."""
    candidates = [n for n, c in fp["classes"].items() if c["median_components"] <= 1.0]
    return Decision([], "off until measured: a planned run decides it after training on its validation"
                        " predictions (medseg.plan.post); candidates with one component per case:"
                        f" {', '.join(candidates) or 'none'}")


#: a class whose outer border is at least this share (median over cases) one other foreground class lies inside it
NESTED = 0.75


def reported_classes(fp: dict[str, Any]) -> Decision:
    """One reported class per foreground label, except that a class lying inside another (a tumour in the
    liver or the kidney: at least ``NESTED`` of its border, median over cases, is that class) is also counted in
    the outer one, reported as the whole organ (LiTS and KiTS score the liver and the kidney so, tumours
    included); the inner class is still reported on its own."""
    labels = {n: v for n, v in fp["labels"].items() if v != 0}
    inside: dict[str, str] = {}
    for name, stats in fp["classes"].items():
        border = {o: s for o, s in stats.get("median_border", {}).items() if o in labels}
        if border:
            outer, share = max(border.items(), key=lambda kv: kv[1])
            if share >= NESTED and fp["classes"].get(outer, {}).get("median_border", {}).get(name, 0.0) < NESTED:
                inside[name] = outer

    def members(name: str, seen: tuple[str, ...] = ()) -> list[int]:
        out = [labels[name]]
        for inner, outer in inside.items():
            if outer == name and inner not in seen:
                out += members(inner, seen + (name,))
        return sorted(set(out))

    classes = {n: members(n) for n in labels}
    if not inside:
        return Decision(classes, "one reported class per foreground label: none lies inside another (merge labels"
                                 " here, e.g. liver: [1, 2])")
    why = "; ".join(f"{i} lies inside {o} ({fp['classes'][i]['median_border'][o]:.0%} of its border, median)"
                    for i, o in inside.items())
    wholes = ", ".join(f"{o} = labels {'+'.join(str(v) for v in classes[o])}" for o in sorted(set(inside.values())))
    return Decision(classes, f"{why}: {wholes} (the whole organ, as LiTS and KiTS report it); every label also"
                             " on its own")
