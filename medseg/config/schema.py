"""The task config schema: every key with its default, type and range, as pydantic models.

Sections are models (``cfg.training.epochs``); free-form maps (``data.labels``, ``data.label_map``,
``evaluation.classes``, ``network.args``) are plain dicts. Names (networks, losses, optimisers, schedules,
presets, modalities, layouts, amp modes) are checked against :mod:`medseg.config.registries`. Checks that need
the networks themselves (arguments, input multiples) live in :func:`medseg.networks.check_network`.

Values fitted from the data (``spacing: auto``, histogram landmarks, image files per case, a 0/255 label map)
live only in :attr:`TaskConfig.fitted`, filled by :func:`medseg.transforms.fit.fit_preprocessing`; read the
values in use through :meth:`TaskConfig.effective_spacing` and its siblings.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Callable

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, Strict,
                      ValidationError, model_validator)
from pydantic_core import PydanticCustomError

from medseg.config import registries as reg
from medseg.errors import MedsegError


class KeyedError(ValueError):
    """A bad value with the dotted key it belongs to (turned into a one-line :class:`MedsegError`)."""

    def __init__(self, key: str, text: str) -> None:
        super().__init__(f"key '{key}' {text}")
        self.key, self.text = key, text


def _fail(key: str | None, text: str, whole: bool = False) -> PydanticCustomError:
    """A validation error carrying its message (and, for checks across keys, the dotted key it names);
    ``whole``: ``text`` is the whole message (it names the keys itself)."""
    return PydanticCustomError("medseg", "{text}", {"text": text, "key": key or "", "whole": whole})


def _check(ok: Callable[[Any], bool], text: str) -> AfterValidator:
    """Refuse a value failing ``ok`` with ``text`` (``{v}`` is the value)."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise _fail(None, text.format(v=value))
        return value

    return AfterValidator(check)


def _one_of(registry: reg.Registry | dict[str, Any]) -> AfterValidator:
    """Names from ``registry``, looked up when validating (so a name added to the table is accepted)."""

    def check(value: Any) -> Any:
        if value not in registry:
            raise _fail(None, f"is {value!r}; choose one of {', '.join(sorted(registry))}")
        return value

    return AfterValidator(check)


def _yaml_number(value: Any) -> Any:
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


Float = Annotated[float, BeforeValidator(_yaml_number)]
AtLeast1 = Annotated[int, _check(lambda v: v >= 1, "must be at least 1")]
NonNegative = Annotated[Float, _check(lambda v: v >= 0, "must not be negative")]
NonNegativeInt = Annotated[int, _check(lambda v: v >= 0, "must not be negative")]
Positive = Annotated[Float, _check(lambda v: v > 0, "must be positive")]
Ratio = Annotated[Float, _check(lambda v: 0.0 < v <= 1.0, "must be in (0, 1]")]
Prob = Annotated[Float, _check(lambda v: 0.0 <= v <= 1.0, "is {v!r}; a probability must be between 0 and 1")]
Number = Annotated[float, Strict(False)]  # int or float in a list


def _pair(low: float | None = None, positive: bool = False) -> AfterValidator:
    def check(value: list[float]) -> list[float]:
        if len(value) != 2 or value[0] > value[1]:
            raise _fail(None, f"is {value!r}; give [min, max] with min <= max")
        if positive and value[0] <= 0:
            raise _fail(None, f"is {value!r}; both values must be > 0")
        if low is not None and value[0] < low:
            raise _fail(None, f"is {value!r}; values must be >= {low}")
        return value

    return AfterValidator(check)


Range = Annotated[list[Number], _pair()]
PositiveRange = Annotated[list[Number], _pair(positive=True)]
NonNegativeRange = Annotated[list[Number], _pair(low=0.0)]

_WINDOW_HELP = (f"choose a preset ({', '.join(sorted(reg.WINDOW_PRESETS))}), {{level, width}} or {{min, max}} in"
                " HU, or a list of these (one input channel each)")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _one_window(item: Any, key: str) -> tuple[float, float]:
    if isinstance(item, str):
        if item not in reg.WINDOW_PRESETS:
            raise KeyedError(key, f"names unknown preset '{item}'; {_WINDOW_HELP}")
        level, width = reg.WINDOW_PRESETS[item]
        return level - width / 2.0, level + width / 2.0
    if isinstance(item, dict) and set(item) == {"level", "width"}:
        level, width = item["level"], item["width"]
        if not (_is_number(level) and _is_number(width)):
            raise KeyedError(key, f"needs numbers for level and width, got {item!r}")
        if width <= 0:
            raise KeyedError(f"{key}.width", f"is {width}; a window width must be > 0 HU")
        return float(level) - float(width) / 2.0, float(level) + float(width) / 2.0
    if isinstance(item, dict) and set(item) == {"min", "max"}:
        lo, hi = item["min"], item["max"]
        if not (_is_number(lo) and _is_number(hi)):
            raise KeyedError(key, f"needs numbers for min and max, got {item!r}")
        if hi <= lo:
            raise KeyedError(key, f"has max {hi} <= min {lo}; a window width must be > 0 HU")
        return float(lo), float(hi)
    raise KeyedError(key, f"is {item!r}; {_WINDOW_HELP}")


def window_ranges(spec: Any) -> list[tuple[float, float]]:
    """The CT windows of a ``preprocessing.window`` value as ``[(min_hu, max_hu), ...]`` (one per channel).

    Raises:
        KeyedError: an unknown preset, a width <= 0, or a shape that is none of the accepted ones.
    """
    if isinstance(spec, list):
        if not spec:
            raise KeyedError("preprocessing.window", f"is an empty list; {_WINDOW_HELP}")
        return [_one_window(item, f"preprocessing.window[{i}]") for i, item in enumerate(spec)]
    return [_one_window(spec, "preprocessing.window")]


def _window(value: Any) -> Any:
    try:
        window_ranges(value)
    except KeyedError as err:
        raise _fail(err.key, err.text) from None
    return value


def _spacing(value: Any) -> Any:
    ok = value == "auto" or (isinstance(value, list) and value and all(_is_number(s) and s > 0 for s in value))
    if not ok:
        raise _fail(None, f"is {value!r}; give positive spacings in mm, one per axis, or 'auto' for the training"
                          " set's median spacing")
    return [float(s) for s in value] if isinstance(value, list) else value


class Section(BaseModel):
    """A config section: typed fields, unknown keys refused.

    medseg's own code reads fields as attributes (``cfg.training.epochs``). Sections also answer the
    mapping calls (``section["key"]``, ``.get``, ``in``, ``.items()``) so that notebooks and scripts written
    against the dict config of earlier medseg versions keep working.
    """

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False)

    # --- mapping access, for code written against the dict config of earlier medseg versions ---
    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in type(self).model_fields:
            raise KeyError(key)
        setattr(self, key, value)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in type(self).model_fields else default

    def __contains__(self, key: object) -> bool:
        return key in type(self).model_fields

    def keys(self) -> list[str]:
        return list(type(self).model_fields)

    def __iter__(self):  # type: ignore[override]  # keys, as a dict iterates
        return iter(type(self).model_fields)

    def __len__(self) -> int:
        return len(type(self).model_fields)

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in type(self).model_fields]

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in type(self).model_fields]

    # --- end of mapping access ---

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists and scalars (YAML and JSON)."""
        return self.model_dump(mode="python")


class DataConfig(Section):
    layout: Annotated[str, _one_of(reg.LAYOUTS)] = "msd"  # medseg/data/layouts.py
    dataset: str = ""  # folder under --data-dir (or an absolute path)
    sample: str = ""  # built-in sample used when the dataset folder is absent ("" = none)
    labels: dict[str, int] = Field(default_factory=lambda: {"background": 0})  # label value per name
    val_fraction: Annotated[Float, _check(lambda v: 0.0 < v < 1.0, "must be between 0 and 1")] = 0.2
    modality: Annotated[str, _one_of(reg.MODALITIES)] = "CT"
    # value in the label files -> label value, e.g. {255: 1} (0/255 masks; detected when left empty)
    label_map: dict[Annotated[int, Strict(False)], int] = Field(default_factory=dict)
    skip_bad: bool = False  # leave out (and list) cases that fail the header checks instead of stopping
    # colour PNG/TIFF/JPEG images: "rgb" = three input channels, "grey" = converted to one (ITU-R 601 luma)
    rgb: Annotated[str, _one_of({"rgb": "", "grey": ""})] = "rgb"


class ZScore(Section):
    region: Annotated[str, _one_of(reg.ZSCORE_REGIONS)] = "nonzero"  # mask = Otsu foreground


class Percentile(Section):
    lower: Float = 0.5
    upper: Float = 99.5

    @model_validator(mode="after")
    def _order(self) -> Percentile:
        if not 0.0 <= self.lower < self.upper <= 100.0:
            raise _fail("preprocessing.percentile", f"keys 'preprocessing.percentile.lower/upper' are"
                        f" {self.lower}/{self.upper}; need 0 <= lower < upper <= 100", whole=True)
        return self


class Histogram(Section):
    """Nyul standardisation: landmarks at these percentiles, learned on the training set unless listed."""

    percentiles: list[Number] = Field(default_factory=lambda: [1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0,
                                                                80.0, 90.0, 99.0])
    landmarks: list[Number] = Field(default_factory=list)

    @model_validator(mode="after")
    def _increasing(self) -> Histogram:
        p, marks = self.percentiles, self.landmarks
        if len(p) < 3 or any(not 0.0 <= a < b <= 100.0 for a, b in zip(p, p[1:])):
            raise _fail("preprocessing.histogram.percentiles",
                        f"is {p!r}; give at least 3 increasing values between 0 and 100")
        if marks and (len(marks) != len(p) or any(a >= b for a, b in zip(marks, marks[1:]))):
            raise _fail("preprocessing.histogram.landmarks", "must hold one increasing value per percentile"
                        " (leave it empty: training learns them)")
        return self


class BiasCorrection(Section):
    enabled: bool = False
    shrink: AtLeast1 = 4
    iterations: Annotated[list[int], _check(lambda v: v and all(i >= 1 for i in v),
                                            "needs a list of positive iteration counts, one per fitting level")] = \
        Field(default_factory=lambda: [50, 50, 30])
    cache_dir: str = ".cache/n4"


class PreprocessingConfig(Section):
    orientation: Annotated[str, _one_of(reg.ORIENTATIONS)] = "RAS"
    # target spacing in mm, or "auto": the training set's median spacing (fitted into cfg.fitted.spacing)
    spacing: Annotated[Any, AfterValidator(_spacing)] = Field(default_factory=lambda: [1.5, 1.5, 1.5])
    # CT window in HU, mapped to [0, 1] and clipped: a preset name (registries.WINDOW_PRESETS), {level, width},
    # {min, max}, or a list of these (stacked as input channels)
    window: Annotated[Any, AfterValidator(_window)] = "soft_tissue"
    intensity: Annotated[str, _one_of(reg.INTENSITY_METHODS)] = "window"
    zscore: ZScore = Field(default_factory=ZScore)
    percentile: Percentile = Field(default_factory=Percentile)  # clipped, scaled to [0, 1]
    histogram: Histogram = Field(default_factory=Histogram)
    bias_correction: BiasCorrection = Field(default_factory=BiasCorrection)
    crop_foreground: bool = True
    pad_to_multiple: bool = False  # pad to a multiple of the network's total stride
    # image files per case (nnU-Net _0000, _0001, ...); 0 = counted on the training cases (cfg.fitted)
    image_channels: Annotated[int, _check(lambda v: v >= 0, "is {v}; give 0 (count them) or more")] = 0


class Elastic(Section):
    prob: Prob = 0.3
    sigma: PositiveRange = Field(default_factory=lambda: [5.0, 8.0])  # smoothness
    magnitude: NonNegativeRange = Field(default_factory=lambda: [50.0, 150.0])  # alpha


class ProbRange(Section):
    prob: Prob = 0.0
    range: PositiveRange = Field(default_factory=lambda: [0.75, 1.25])


class Noise(Section):
    prob: Prob = 0.0
    std: NonNegative = 0.05  # Gaussian


class Blur(Section):
    prob: Prob = 0.0
    sigma: PositiveRange = Field(default_factory=lambda: [0.5, 1.0])  # Gaussian, voxels


class BiasField(Section):
    prob: Prob = 0.0
    coeff: NonNegativeRange = Field(default_factory=lambda: [0.0, 0.3])
    degree: int = 3


class Crop(Section):
    mode: Annotated[str, _one_of(reg.CROP_MODES)] = "balanced"  # balanced (training.pos_neg_ratio) | random
    pad_to_patch: bool = True


class AugmentationConfig(Section):
    elastic: Elastic = Field(default_factory=Elastic)
    rotate_deg: Annotated[Float, _check(lambda v: 0.0 <= v <= 180.0, "is {v}; give degrees between 0 and 180")] = 15.0
    rotate_prob: Prob = 0.5
    scale: PositiveRange = Field(default_factory=lambda: [0.8, 1.2])
    scale_prob: Prob = 0.5
    flip_prob: Prob = 0.5  # mirroring along every axis, as nnU-Net does
    intensity_shift: NonNegative = 0.1  # brightness: add and multiply by up to +-intensity_shift
    intensity_prob: Prob = 0.5
    contrast: ProbRange = Field(default_factory=ProbRange)  # scale around the mean
    gamma: ProbRange = Field(default_factory=lambda: ProbRange(range=[0.7, 1.5]))
    noise: Noise = Field(default_factory=Noise)
    blur: Blur = Field(default_factory=Blur)
    bias_field: BiasField = Field(default_factory=BiasField)  # MRI smooth multiplicative field
    crop: Crop = Field(default_factory=Crop)


class NetworkConfig(Section):
    """``python -m medseg.networks`` lists the names, sizes and papers; checks that need the network
    (its arguments, input multiple, outputs) are :func:`medseg.networks.check_network`."""

    name: Annotated[str, _one_of(reg.NETWORKS)] = "resunet"  # MONAI UNet with residual units
    spatial_dims: Annotated[int, _check(lambda v: v in (2, 3), "is {v}; the networks are 2D or 3D")] = 3
    # shorthand for the network's arguments of the same meaning; null = the network's own default
    channels: list[Any] | None = None
    strides: list[Any] | None = None
    num_res_units: int | None = None
    dropout: Float | None = None
    norm: Annotated[str, _one_of(reg.NORMS)] | None = None
    args: dict[str, Any] = Field(default_factory=dict)  # any other constructor argument, e.g. {prune_depth: 3}
    deep_supervision: bool = False  # train on [main, aux...] outputs (unetpp, unet3p); inference uses main
    ds_weights: list[Any] = Field(default_factory=list)  # loss weight per output, main first; [] = 1, 0.5, ...
    slice_mode: bool = False  # a 2D network on 3D volumes: train on 2D slices, predict slice by slice
    slice_axis: Annotated[int, _check(lambda v: 0 <= v <= 2, "must be 0, 1 or 2 (2 = axial in RAS)")] = 2


class WeightMap(Section):
    """U-Net weight map (Ronneberger et al. 2015, eq. 2) for the weighted losses (``training.loss: weighted_ce`` or
    ``weighted_dice_ce``): class balancing plus ``w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` between objects."""

    w0: NonNegative = 10.0
    sigma: Positive = 5.0  # pixels (voxels)
    # the label value whose connected components are the objects (cells: the interior); 0 = every foreground value
    objects: NonNegativeInt = 0


class TrainingConfig(Section):
    epochs: AtLeast1 = 40
    iterations_per_epoch: AtLeast1 = 20
    batch_size: AtLeast1 = 2
    patch_size: Annotated[list[int], _check(lambda v: all(p >= 1 for p in v), "is {v}; sizes must be >= 1")] = \
        Field(default_factory=lambda: [96, 96, 64])
    pos_neg_ratio: NonNegative = 2.0
    loss: Annotated[str, _one_of(reg.LOSSES)] = "dice_ce"  # MONAI losses; medseg/engine/losses.py
    ce_weight: NonNegative = 1.0  # alpha in alpha*CE + beta*Dice (dice_ce); the focal term's weight in dice_focal
    dice_weight: NonNegative = 1.0  # beta
    dice_smooth: NonNegative = 1e-5  # smoothing eps added to numerator and denominator of the soft Dice
    include_background: bool = True  # background channel in the Dice term
    focal_gamma: NonNegative = 2.0
    weight_map: WeightMap = Field(default_factory=WeightMap)  # for the weighted_* losses
    optimizer: Annotated[str, _one_of(reg.OPTIMISERS)] = "adamw"  # medseg/engine/optim.py
    momentum: NonNegative = 0.99  # sgd only
    learning_rate: Positive = 1e-3
    weight_decay: NonNegative = 1e-5
    schedule: Annotated[str, _one_of(reg.SCHEDULES)] = "cosine"  # stepped once per epoch
    min_lr_ratio: Annotated[Float, _check(lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]")] = 0.01
    warmup_epochs: NonNegativeInt = 0  # linear warm-up from warmup_start_ratio * learning_rate
    warmup_start_ratio: Ratio = 0.1
    step_size: AtLeast1 = 10  # step: epochs between decays
    step_gamma: Ratio = 0.1  # step: decay factor
    restart_epochs: AtLeast1 = 10  # cosine_restarts: epochs of the first cycle
    restart_mult: AtLeast1 = 1  # cosine_restarts: cycle length multiplier
    poly_power: NonNegative = 0.9  # poly: lr * (1 - epoch / epochs) ** power
    grad_clip: NonNegative = 0.0  # clip the gradient norm to this value; 0 = no clipping
    amp: Annotated[str, _one_of(reg.AMP_MODES)] = "none"  # fp16 on GPU only, with a gradient scaler
    accumulation_steps: AtLeast1 = 1  # optimiser step every N batches (effective batch = N x batch_size)
    activation_checkpointing: bool = False  # recompute activations in backward (less memory, more time)
    early_stopping_patience: NonNegativeInt = 0  # validations without improvement before stopping; 0 = off
    early_stopping_min_delta: NonNegative = 0.0  # improvement in validation mean Dice that counts
    checkpoint_every: AtLeast1 = 1  # epochs between resumable checkpoints (checkpoints/last.pt)
    folds: Annotated[int, _check(lambda v: v >= 2, "must be at least 2")] = 5  # k of k-fold cross-validation
    val_every: AtLeast1 = 2
    seed: int = 0
    num_workers: NonNegativeInt = 0
    # keep the worker processes from epoch to epoch (with num_workers > 0): no start-up per epoch; a
    # resumed run then draws a new augmentation stream (bit-identical resumes need this off or 0 workers)
    persistent_workers: bool = True
    cache_rate: Annotated[Float, _check(lambda v: 0.0 <= v <= 1.0, "must be between 0 and 1")] = 1.0
    # "" = the in-memory cache (cache_rate); a folder = the deterministic preprocessing stored once on disk (MONAI
    # PersistentDataset under <folder>/<preprocessing digest>/), reused by later runs, folds and resumes; with a
    # folder cache_rate is the share of cases also held in memory (0: every draw reads its case from disk)
    cache_dir: str = ""
    threads: NonNegativeInt = 0  # torch threads; 0 = all cores
    device: Annotated[str, _one_of(reg.DEVICES)] = "auto"

    @model_validator(mode="after")
    def _across_keys(self) -> TrainingConfig:
        if self.ce_weight == 0 and self.dice_weight == 0:
            raise _fail("training.ce_weight", "keys 'training.ce_weight' and 'training.dice_weight' are both 0;"
                        " give one a weight", whole=True)
        if self.warmup_epochs >= self.epochs:
            raise _fail("training.warmup_epochs", "must be less than training.epochs")
        return self


class EvaluationConfig(Section):
    classes: dict[str, list[int]] = Field(default_factory=dict)  # reported class name -> label values merged
    keep_largest_component: list[str] = Field(default_factory=list)  # classes post-processed to their largest part
    sw_overlap: Annotated[Float, _check(lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")] = 0.25
    tolerance_mm: NonNegative = 2.0  # tolerance for normalised surface Dice and boundary F1
    worst_mm: NonNegative = 0.0  # distance given when exactly one mask is empty; 0 = the image diagonal


class InferenceConfig(Section):
    # sliding-window padding at the image border: "constant" (zeros) or "reflect" (mirrored: the U-Net paper's
    # overlap-tile strategy; the default for data.modality: microscopy)
    padding_mode: Annotated[str, _one_of({"constant": "", "reflect": "", "replicate": ""})] = "constant"
    # turn the semantic output into an instance label image (cells/nuclei) + per-object CSV: medseg.predict --instances
    instances: bool = False
    instance_class: NonNegativeInt = 1  # the label value of object interiors (cells, nuclei)
    # components: connected components of the interiors; watershed: seeded by them, on the distance to the border
    instance_method: Annotated[str, _one_of({"components": "", "watershed": ""})] = "components"
    # erode the interiors by this many pixels before they seed the objects, which then grow back over them: thin
    # necks between touching objects no longer merge them (medseg/inference/instances.py)
    instance_seed_erosion: NonNegativeInt = 0


#: the widest click map (voxels): 3 sigma already spans 60 voxels, most of a patch, so a click no longer says where
MAX_CLICK_SIGMA = 20.0
ClickSigma = Annotated[Float, _check(lambda v: 0 < v <= MAX_CLICK_SIGMA,
                                     "is {v!r}; the click map's Gaussian width is in voxels of the preprocessed"
                                     f" grid and must be above 0 and at most {MAX_CLICK_SIGMA:g} (typically 1-5)")]


class InteractiveConfig(Section):
    """Click-guided training (medseg.engine.interactive): one guidance channel per label after the image."""
    enabled: bool = False
    max_clicks: AtLeast1 = 5  # simulated clicks per training sample: 1 initial per class + corrections
    sigma: ClickSigma = 2.0  # Gaussian click map width, voxels of the preprocessed grid
    auto_prob: Prob = 0.25  # share of training samples with no clicks (the automatic segmentation)
    # medseg.serve: voxels recomputed around a click, one per axis of training.patch_size; [] = the patch
    window: Annotated[list[int], _check(lambda v: all(w >= 1 for w in v), "is {v}; sizes must be >= 1")] = \
        Field(default_factory=list)
    # medseg.serve on a bundle without guidance channels: a click changes voxels at most this far from it (mm)
    correction_radius: Positive = 15.0


class TrackingConfig(Section):
    enabled: bool = True
    experiment: str = "medseg"
    system_metrics: bool = True  # CPU, memory (GPU) sampled into the run by MLflow's system-metrics monitor


class BundleConfig(Section):
    enabled: bool = True
    name: Annotated[str, _check(lambda v: v == "" or (re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v) is not None
                                                     and ".." not in v),
                                "must be a plain folder name (letters, digits, '.', '_', '-'; no '/' or '..')")] = ""
    # "" = <task>_segmentation (TaskConfig.bundle_name())
    dir: str = "bundles"
    authors: str = "medseg"
    license: str = "CC-BY-SA-4.0"
    # INT8 model (models/model_int8.onnx) at export: calibration patches, the validation Dice loss allowed per class
    int8: bool = False
    int8_patches: int = Field(default=200, ge=1, le=2000)
    int8_max_dice_loss: float = 0.005  # a negative one refuses every INT8 model (the tests use it)


class FittedConfig(Section):
    """Values learned from the training cases by :func:`medseg.transforms.fit.fit_preprocessing`
    (``None``: not fitted; the configured value applies)."""

    spacing: list[Number] | None = None  # median voxel spacing (for preprocessing.spacing: auto)
    landmarks: list[Number] | None = None  # Nyul histogram landmarks (for empty preprocessing.histogram.landmarks)
    image_channels: int | None = None  # image files per case (for preprocessing.image_channels: 0)
    label_map: dict[Annotated[int, Strict(False)], int] | None = None  # {255: 1} for 0/255 masks (data.label_map {})
    colour_channels: int | None = None  # 3 for RGB(A) pictures kept as colour (data.rgb: rgb), else 1


SECTIONS = ("data", "preprocessing", "augmentation", "network", "training", "evaluation", "inference", "tracking",
            "bundle")


class DistillConfig(Section):
    """``python -m medseg.distill``: loss = weight x T^2 x KL(teacher || student, both softened by temperature T)
    + the task loss on the labels."""

    temperature: float = Field(default=2.0, gt=0)
    weight: float = Field(default=0.5, ge=0)


class TaskConfig(Section):
    """A resolved task config: a pipeline YAML over the defaults (:func:`medseg.config.load_config`), or a
    stored one (:meth:`from_dict`)."""

    task: str = ""
    description: str = ""
    data: DataConfig = Field(default_factory=DataConfig)
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    interactive: InteractiveConfig = Field(default_factory=InteractiveConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    bundle: BundleConfig = Field(default_factory=BundleConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    fitted: FittedConfig = Field(default_factory=FittedConfig)
    _source: str = PrivateAttr(default="")  # the YAML or stored file it came from (for messages)

    @property
    def source(self) -> str:
        """The pipeline YAML or stored config this config was read from ("" when built in code)."""
        return self._source

    def __eq__(self, other: object) -> bool:  # the same keys and values, wherever each was read from
        return isinstance(other, TaskConfig) and self.to_dict() == other.to_dict()

    @model_validator(mode="after")
    def _across_sections(self) -> TaskConfig:
        if not self.task:
            raise _fail("task", "is missing: name the task, e.g. 'task: liver'")
        values = set(self.data.labels.values())
        n = len(self.data.labels)
        if len(values) < n or min(values) < 0 or max(values) >= n:  # one network output per value, 0..n-1
            order = sorted(self.data.labels.items(), key=lambda kv: kv[1])
            renumbered = ", ".join(f"{name}: {i}" for i, (name, _) in enumerate(order))
            moved = {v: i for i, (_, v) in enumerate(order) if v != i}
            raise _fail("data.labels", f"has values {sorted(self.data.labels.values())}; the network has one output"
                        f" per label, so they must be 0..{n - 1}, each once: number them {{{renumbered}}} and map"
                        f" the files' values with data.label_map: {moved} (python -m medseg.plan writes both)")
        for name, members in self.evaluation.classes.items():
            if not members or not set(members) <= values:
                raise _fail(f"evaluation.classes.{name}", f"must list label values from data.labels {sorted(values)}")
        for name in self.evaluation.keep_largest_component:
            if name not in self.evaluation.classes:
                raise _fail("evaluation.keep_largest_component", f"names unknown class '{name}'")
        self._check_dimensions()
        patch = self.training.patch_size
        window = self.interactive.window
        if window and len(window) != len(patch):  # a click's window has the patch's axes (slice mode: 2)
            raise _fail("interactive.window", f"is {window}; give {len(patch)} values, one per axis of"
                                              f" training.patch_size {patch}, or [] for the patch itself")
        size_arg = reg.NETWORK_INPUT_SIZE.get(self.network.name)
        if size_arg and size_arg not in self.network.args:  # a fixed-size network (UNETR) takes the patch size
            self.network = self.network.model_copy(update={"args": {**self.network.args, size_arg: list(patch)}})
        if self.augmentation.crop.mode == "random" and any(p & (p - 1) for p in patch):
            raise _fail("training.patch_size", f"is {patch}; random crops (augmentation.crop.mode: random) take"
                                               " powers of two, e.g. 32, 64, 128")
        return self

    def _check_dimensions(self) -> None:
        net, patch, spacing = self.network, self.training.patch_size, self.preprocessing.spacing
        dims = net.spatial_dims
        data_dims = dims if spacing == "auto" else len(spacing)  # auto: the training set's, fitted before training
        if net.slice_mode:
            if dims != 2:
                raise _fail("network.slice_mode", "needs network.spatial_dims: 2 (2D slices of 3D data)")
            if data_dims != 3:
                raise _fail("network.slice_mode", "needs 3 values in preprocessing.spacing (3D volumes)")
        elif dims != data_dims or len(patch) != dims:
            raise _fail("network.spatial_dims", f"network.spatial_dims is {dims} but training.patch_size has"
                        f" {len(patch)} and preprocessing.spacing {data_dims} values; each needs {dims} values"
                        + (", or set network.slice_mode: true to train the 2D network on slices of 3D volumes"
                           if dims == 2 else ""), whole=True)
        if len(patch) != dims:
            raise _fail("training.patch_size", f"needs {dims} values (the 2D slice size in slice mode)")

    # --- effective values: configured, or fitted from the data ---
    def bundle_name(self) -> str:
        """The bundle's name: ``bundle.name``, or ``<task>_segmentation`` when that is empty."""
        return self.bundle.name or f"{self.task}_segmentation"

    def effective_spacing(self) -> list[float]:
        """The target spacing in mm: ``preprocessing.spacing``, or the fitted median for ``auto``."""
        spacing = self.preprocessing.spacing
        if spacing != "auto":
            return list(spacing)
        if self.fitted.spacing is None:
            raise MedsegError("preprocessing.spacing: 'auto' is resolved from the training set's headers by"
                              " medseg.train (medseg.transforms.fit_preprocessing); give the spacing in mm to use"
                              " it elsewhere")
        return list(self.fitted.spacing)

    def effective_landmarks(self) -> list[float]:
        """Nyul landmarks: listed in ``preprocessing.histogram.landmarks``, else fitted ([] when neither)."""
        return list(self.preprocessing.histogram.landmarks or self.fitted.landmarks or [])

    def effective_image_channels(self) -> int:
        """Image files per case: ``preprocessing.image_channels``, else counted on the training cases, else 1."""
        return int(self.preprocessing.image_channels or self.fitted.image_channels or 1)

    def distance_unit(self) -> str:
        """The unit of the task's distances (its spacing's): mm for volumes and their slices; for a 2D network on
        whole pictures the pixel size medseg reads (medseg.data.tiff_units): "µm" where the training grid is not 1
        per pixel, "px" where it is (PNG, JPEG, TIFFs that state no pixel size)."""
        if int(self.network.spatial_dims) != 2 or self.network.slice_mode:
            return "mm"
        spacing = self.preprocessing.spacing
        if not isinstance(spacing, (list, tuple)):  # auto: the median the data gave
            spacing = self.fitted.spacing or [1.0, 1.0]
        return "px" if all(abs(float(v) - 1.0) < 1e-9 for v in spacing) else "µm"

    def effective_label_map(self) -> dict[int, int]:
        """Label file value -> label value: ``data.label_map``, else the fitted one (0/255 masks), else {}."""
        return {int(k): int(v) for k, v in (self.data.label_map or self.fitted.label_map or {}).items()}

    def with_fitted(self, **values: Any) -> TaskConfig:
        """A copy with ``fitted`` values set (the config itself is left alone)."""
        fitted = self.fitted.model_copy(update=values)
        return self.model_copy(update={"fitted": fitted})

    @classmethod
    def from_dict(cls, data: Any, source: str) -> TaskConfig:
        """Validate a stored config (a run folder's ``config.yaml``, ``resume.json``, a bundle's
        ``medseg_task.json``).

        The stored dict is merged over the schema defaults: a key it lacks (written by an older medseg, before
        the key existed) takes today's default; unknown keys and wrong types are refused naming the dotted key.
        Configs written before ``fitted`` hold the fitted spacing, landmarks and channel count as plain values
        of ``preprocessing``, which work as they are.
        """
        if not isinstance(data, dict):
            raise MedsegError(f"{source}: a task config must be a mapping of sections, got {type(data).__name__}")
        return validate(_over_defaults(cls, defaults(), data), lambda key: source, source)


def _over_defaults(model: type[BaseModel], base: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """A new dict: ``stored`` over ``base`` (the defaults), sections merged key by key; free-form maps
    (``data.labels``, ``network.args``, ...) and values of other types are taken whole from ``stored``."""
    out = dict(base)
    for key, value in stored.items():
        field = model.model_fields.get(key)
        kind = field.annotation if field is not None else None
        section = isinstance(kind, type) and issubclass(kind, Section)
        if section and isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = _over_defaults(kind, base[key], value)
        else:
            out[key] = value
    return out


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]" and not str(part).startswith(("function-", "constrained-")):
            out += ("." if out else "") + str(part)
    return out


def _section_at(key: str) -> type[BaseModel] | None:
    model: Any = TaskConfig
    for part in key.split(".")[:-1] if key else []:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


_TYPE_NAMES = {"int": "int", "float": "float", "bool": "bool", "string": "str", "list": "list", "dict": "a mapping",
               "model": "a mapping", "model_attributes": "a mapping", "int_from_float": "int", "int_parsing": "int",
               "float_parsing": "float", "none_required": "null"}


def error_line(err: dict[str, Any]) -> tuple[str, str]:
    """(dotted key, one-line message) for one pydantic error of a :class:`TaskConfig` validation."""
    kind, ctx = err["type"], err.get("ctx") or {}
    key = _dotted(err["loc"])
    if kind == "medseg":
        key = ctx.get("key") or key
        return key, ctx["text"] if ctx.get("whole") else f"key '{key}' {ctx['text']}"
    if kind == "extra_forbidden":
        section = _section_at(key)
        known = ", ".join(sorted(section.model_fields)) if section else "(none)"
        return key, f"unknown key '{key}' (known keys here: {known})"
    if kind == "missing":
        return key, f"key '{key}' is missing"
    value = err.get("input")
    base = kind.removesuffix("_type")
    if base in _TYPE_NAMES or kind in _TYPE_NAMES:
        want = _TYPE_NAMES.get(base) or _TYPE_NAMES[kind]
        return key, f"key '{key}' must be {want}, got {value!r} ({type(value).__name__})"
    return key, f"key '{key}' is {value!r}: {err['msg']}"


def _error_order(err: dict[str, Any]) -> int:
    # a null network shorthand also fails the other union member: report the type error, not "should be None"
    return 1 if err["type"] == "none_required" else 0


def validate(data: dict[str, Any], source_of: Callable[[str], str], source: str = "") -> TaskConfig:
    """Validate a config dict into a :class:`TaskConfig`; the first problem becomes one :class:`MedsegError`
    line ``"<source>: <message naming the dotted key>"``, ``source_of(dotted key)`` naming where it came from."""
    try:
        cfg = TaskConfig.model_validate(data)
    except ValidationError as err:
        first = sorted(err.errors(), key=_error_order)[0]
        key, line = error_line(first)
        raise MedsegError(f"{source_of(key)}: {line}") from None
    cfg._source = source
    return cfg


def defaults() -> dict[str, Any]:
    """Every key with its default value, as plain dicts (``task`` empty)."""
    return TaskConfig.model_construct(**{name: field.get_default(call_default_factory=True)
                                         for name, field in TaskConfig.model_fields.items()}).to_dict()
