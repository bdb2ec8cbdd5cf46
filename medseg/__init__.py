"""medseg: medical image segmentation on MONAI, from a task YAML to a MONAI Bundle."""

from __future__ import annotations

import logging
import warnings

__version__ = "0.2.0"

# MONAI probes for a GPU DICOM decoder whenever LoadImage builds its readers and says so on every
# call; on machines without one that is noise, not news.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin")
