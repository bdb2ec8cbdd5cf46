"""The option names of the config, one table per registry: the only place each list is written.

The config is the bottom layer, so it must not import the networks, losses or transforms it names. Each
table maps a name to the ``"module:attribute"`` of what implements it; the layer that builds the thing
resolves it lazily (:meth:`Registry.resolve`), and the schema (:mod:`medseg.config.schema`) validates a
config's names against the same table. A new loss, optimiser, schedule or network is one line here plus
its implementation.

Example:
    >>> LOSSES.names()
    ['dice_ce', 'dice', 'ce', 'dice_focal']
    >>> LOSSES.resolve("dice")  # the builder of the MONAI loss entry, in medseg/engine/losses.py
    <function dice_def at ...>
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from medseg.errors import MedsegError


@dataclass(frozen=True)
class Registry:
    """Names accepted by the config key ``key``, each with the ``"module:attribute"`` implementing it
    (``""`` where a name has no implementation of its own, e.g. an amp mode handled by one function)."""

    key: str
    entries: dict[str, str]

    def names(self) -> list[str]:
        return list(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self):
        return iter(self.entries)

    def target(self, name: str) -> str:
        """The ``"module:attribute"`` of ``name``; one line naming the choices for an unknown one."""
        if name not in self.entries:
            raise MedsegError(f"{self.key} '{name}' is not known; choose one of {', '.join(self.entries)}")
        return self.entries[name]

    def resolve(self, name: str) -> Any:
        """The object implementing ``name`` (imported on first use)."""
        module, _, attribute = self.target(name).partition(":")
        return getattr(importlib.import_module(module), attribute)


NETWORKS = Registry("network.name", {
    "unet": "medseg.networks.unet:OriginalUNet",
    "resunet": "monai.networks.nets:UNet",
    "attention_unet": "monai.networks.nets:AttentionUnet",
    "unetpp": "medseg.networks.unetpp:UNetPlusPlus",
    "unet3p": "medseg.networks.unet3p:UNet3Plus",
    "unetr": "monai.networks.nets:UNETR",
    "swin_unetr": "monai.networks.nets:SwinUNETR",
    "light_unet": "medseg.networks.light_unet:LightUNet",
})

#: networks with a fixed input size: the constructor argument holding it (filled from training.patch_size)
NETWORK_INPUT_SIZE = {"unetr": "img_size"}

NORMS = Registry("network.norm", {"instance": "", "batch": ""})

LOSSES = Registry("training.loss", {  # builders of the MONAI loss entry from the training section
    "dice_ce": "medseg.engine.losses:dice_ce_def",
    "dice": "medseg.engine.losses:dice_def",
    "ce": "medseg.engine.losses:ce_def",
    "dice_focal": "medseg.engine.losses:dice_focal_def",
    "weighted_ce": "medseg.engine.losses:weighted_ce_def",  # U-Net weight map (training.weight_map)
    "weighted_dice_ce": "medseg.engine.losses:weighted_dice_ce_def",
})

OPTIMISERS = Registry("training.optimizer", {
    "adamw": "medseg.engine.optim:adamw_def",
    "adam": "medseg.engine.optim:adam_def",
    "sgd": "medseg.engine.optim:sgd_def",
})

SCHEDULES = Registry("training.schedule", {  # stepped once per epoch
    "cosine": "medseg.engine.optim:cosine_def",
    "step": "medseg.engine.optim:step_def",
    "cosine_restarts": "medseg.engine.optim:cosine_restarts_def",
    "poly": "medseg.engine.optim:poly_def",
    "constant": "medseg.engine.optim:constant_def",
})

AMP_MODES = Registry("training.amp", {  # all three handled by medseg.engine.precision.precision_arguments
    "none": "", "bf16": "medseg.engine.precision:AutocastInferer", "fp16": "",
})

DEVICES = Registry("training.device", {"auto": "", "cpu": "", "cuda": ""})

LAYOUTS = Registry("data.layout", {
    "msd": "medseg.data.msd:load_msd_dataset",
    "nnunet": "medseg.data.layouts:_nnunet_cases",
    "csv": "medseg.data.layouts:_csv_cases",
    "folders": "medseg.data.layouts:_folder_cases",
})

ORIENTATIONS = Registry("preprocessing.orientation", {"RAS": "", "LPS": ""})

INTENSITY_METHODS = Registry("preprocessing.intensity", {  # the transforms medseg.transforms.pipeline builds
    "window": "monai.transforms:ScaleIntensityRanged",
    "zscore": "monai.transforms:NormalizeIntensityd",
    "percentile": "monai.transforms:ScaleIntensityRangePercentilesd",
    "histogram": "medseg.transforms.intensity:HistogramStandardized",
    "none": "",
})

ZSCORE_REGIONS = Registry("preprocessing.zscore.region", {"image": "", "nonzero": "", "mask": ""})

CROP_MODES = Registry("augmentation.crop.mode", {"balanced": "", "random": ""})

#: CT windows as (level, width) in HU, the usual radiology reading windows (``preprocessing.window``).
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "liver": (30.0, 150.0),
    "abdomen": (50.0, 400.0),
    "soft_tissue": (40.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

#: ``data.modality`` names with their defaults, layered between the schema defaults and the task YAML, so a
#: YAML that names only the modality gets a sensible intensity normalisation and augmentation.
MODALITIES: dict[str, dict[str, Any]] = {
    "CT": {},
    "MR": {
        "preprocessing": {"intensity": "zscore"},
        "augmentation": {"contrast": {"prob": 0.15}, "gamma": {"prob": 0.3}, "noise": {"prob": 0.1},
                         "blur": {"prob": 0.1}, "bias_field": {"prob": 0.3}},
    },
    "XR": {
        "preprocessing": {"intensity": "percentile", "crop_foreground": False},
        "augmentation": {"contrast": {"prob": 0.3}, "gamma": {"prob": 0.3}, "noise": {"prob": 0.1}},
    },
    "microscopy": {
        "preprocessing": {"intensity": "percentile", "crop_foreground": False},
        "augmentation": {"contrast": {"prob": 0.3}, "gamma": {"prob": 0.3}, "noise": {"prob": 0.1},
                         "blur": {"prob": 0.1}},
        "inference": {"padding_mode": "reflect"},  # overlap-tile (U-Net paper): mirrored borders
    },
}
