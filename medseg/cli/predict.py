"""``python -m medseg.predict``: segment NIfTI/NRRD/MHA files or DICOM series with a MONAI Bundle.

Writes ``<case>_seg.nii.gz`` in the input's own geometry, or with ``--format dicom-seg`` (DICOM input)
a DICOM SEG that references the source series. Inference: the bundle's own chain (the one its
``inference.json`` runs), optional mirrored test-time augmentation (``--tta``).

Example:
    python -m medseg.predict --bundle bundles/liver_ct_segmentation --input scans/ --output masks/
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from medseg.cli.startup import PREDICT_DEFERRED, defer
from medseg.errors import MedsegError, run_cli

# plain tuples, so that --help answers without importing torch and MONAI (tests/inference/test_deploy.py checks they are
# medseg.workflows.predict.FORMATS and medseg.inference.runtimes.ENGINES)
FORMATS = ("auto", "nifti", "dicom-seg")
ENGINES = ("torch", "onnxruntime", "openvino", "openvino-bf16")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medseg.predict", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True, help="MONAI Bundle folder (bundles/<name>) or .zip")
    p.add_argument("--input", type=Path, required=True, help="image file, DICOM series folder, or folder of cases")
    p.add_argument("--output", type=Path, required=True, help="output folder")
    p.add_argument("--format", choices=FORMATS, default="auto",
                   help="output format (default auto: PNG/TIFF/JPEG input as PNG/TIFF masks, the rest NIfTI)")
    p.add_argument("--tta", action="store_true", help="average over mirrored copies (2^d passes, slower)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--series", help="SeriesInstanceUID, where a DICOM folder holds several series")
    p.add_argument("--trust", action="store_true", help="allow a bundle not written by medseg to run its config code")
    p.add_argument("--engine", choices=ENGINES, default="torch",
                   help="runtime of the forward passes (default torch; onnxruntime/openvino run models/model.onnx;"
                        " openvino-bf16: OpenVINO in bfloat16 on CPUs that have it)")
    p.add_argument("--int8", action="store_true",
                   help="run the bundle's INT8 model (models/model_int8.onnx; openvino unless --engine onnxruntime)")
    p.add_argument("--instances", action="store_true", default=None,
                   help="also write <case>_instances.tif and <case>_objects.csv (cells/nuclei; YAML inference.instances)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch  # deferred: --help answers without torch and MONAI

    from medseg.workflows import predict  # deferred: as above

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # the bar shows on a terminal only (a line per case otherwise)
    done = [0]  # cases so far (a disabled bar counts nothing)
    with tqdm(desc="predicting", unit="case", file=sys.stderr, disable=None) as bar:
        def report(name: str, out: Path | None, reason: str | None) -> None:
            done[0] += 1
            bar.update()
            if reason is not None:
                print(f"medseg: case '{name}' failed: {reason}", file=sys.stderr)
            elif bar.disable:
                print(f"[{done[0]}] {name} -> {out.name}", flush=True)

        written = predict.run(args.bundle, args.input, args.output, format=args.format, tta=args.tta, device=device,
                              series=args.series, trust=args.trust, on_case=report,
                              engine=args.engine, int8=args.int8, instances=args.instances, debug=args.debug)
    failed = [name for name, _ in written.failed]
    if failed and not written and not written.unexpected:  # every case refused for its input: a bad --input
        raise MedsegError(f"{args.input}: none of its {len(failed)} case(s) could be predicted (each one's reason is"
                          " above); fix or remove them and run again")
    print(f"wrote {len(written)} segmentation(s) to {args.output}"
          + (f"; {len(failed)} failed: {', '.join(failed)}" if failed else ""))
    if written.unexpected:  # not a refusal of the input: a fault worth a report, with its traceback
        print(f"medseg: --debug stops at the first of these errors with its traceback ({', '.join(written.unexpected)})",
              file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the process's own command line (python -m): nothing else shares the process
        defer(PREDICT_DEFERRED)  # what MONAI's import loads and prediction never uses waits (medseg.cli.startup)
    return run_cli(run, argv)
