"""``python -m medseg.predict``: segment NIfTI/NRRD/MHA files or DICOM series with a MONAI Bundle.

Writes ``<case>_seg.nii.gz`` in the input's own geometry, or with ``--format dicom-seg`` (DICOM input)
a DICOM SEG that references the source series. Inference: sliding windows with Gaussian blending,
optional mirrored test-time augmentation (``--tta``), the bundle's largest-component post-processing.

Example:
    python -m medseg.predict --bundle bundles/liver_ct_segmentation --input scans/ --output masks/
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from medseg.errors import MedsegError, run_cli

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
logger = logging.getLogger("medseg.predict")


def find_inputs(path: Path) -> list[tuple[str, Path]]:
    """Cases under ``path``: one image file, one DICOM series folder, or a folder of either."""
    from medseg.data.dicom_seg import is_dicom_series
    from medseg.data.labelmaps import case_name

    if path.is_file():
        return [(case_name(path), path)]
    if not path.is_dir():
        raise MedsegError(f"--input {path}: no such file or folder")
    if is_dicom_series(path):
        return [(path.name, path)]
    cases = []
    for child in sorted(path.iterdir()):
        if child.is_file() and child.name.lower().endswith(IMAGE_SUFFIXES):
            cases.append((case_name(child), child))
        elif child.is_dir() and is_dicom_series(child):
            cases.append((child.name, child))
    if not cases:
        raise MedsegError(f"--input {path}: no images ({', '.join(IMAGE_SUFFIXES)}) or DICOM series folders in it")
    return cases


def _foreign_cfg(bundle) -> dict:
    """The few settings predict needs, read from a (trusted) foreign bundle's parsed config and metadata."""
    import json

    inferer = bundle.parser.get_parsed_content("inferer")
    meta_path = Path(bundle.parser["bundle_root"]) / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    try:
        channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        n_inputs = int(meta["network_data_format"]["inputs"]["image"].get("num_channels", 1))
    except (KeyError, AttributeError, TypeError, ValueError) as err:
        raise MedsegError(f"{meta_path}: network_data_format lacks {err} (inputs.image, outputs.pred.channel_def);"
                          " medseg.predict cannot run this bundle, run its inference.json with MONAI") from None
    return {
        # the channel count as input_channels() reads it: image files x 1 (no CT windows of medseg's)
        "preprocessing": {"intensity": "none", "image_channels": n_inputs},
        "training": {"patch_size": list(inferer.roi_size)},
        "evaluation": {"sw_overlap": float(inferer.overlap), "classes": {}, "keep_largest_component": []},
        "data": {"labels": {name: int(k) for k, name in channels.items()}},
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medseg.predict", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True, help="MONAI Bundle folder (bundles/<name>)")
    p.add_argument("--input", type=Path, required=True, help="image file, DICOM series folder, or folder of cases")
    p.add_argument("--output", type=Path, required=True, help="output folder")
    p.add_argument("--format", choices=("nifti", "dicom-seg"), default="nifti", help="output format (default nifti)")
    p.add_argument("--tta", action="store_true", help="average over mirrored copies (2^d passes, slower)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--trust", action="store_true", help="allow a bundle not written by medseg to run its config code")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    from tqdm import tqdm

    from medseg import __version__
    from medseg.bundle.load import load_bundle
    from medseg.data.dicom import series_headers_ok
    from medseg.data.labelmaps import write_label_nifti
    from medseg.engine.inference import predict_case

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedsegError("--device cuda: no CUDA device is visible")
    bundle = load_bundle(args.bundle, device, trust=args.trust)
    cfg = bundle.cfg or _foreign_cfg(bundle)
    cases = find_inputs(args.input)
    if args.format == "dicom-seg":
        from medseg.data.dicom_seg import is_dicom_series, write_dicom_seg

        not_dicom = [name for name, path in cases if not is_dicom_series(path)]
        if not_dicom:
            raise MedsegError(f"--format dicom-seg needs DICOM series input; not DICOM: {', '.join(not_dicom)}")
    args.output.mkdir(parents=True, exist_ok=True)
    names = {v: k for k, v in cfg["data"]["labels"].items() if v != 0}
    failed: list[str] = []
    done_cases: list[str] = []
    with tqdm(cases, desc="predicting", unit="case", file=sys.stderr, disable=None) as bar:
        for name, path in bar:
            try:
                if path.is_dir():  # medseg's series checks (order, spacing, tilt, gaps) before MONAI's reader
                    series_headers_ok(path)
                pred = predict_case(cfg, bundle.network, {"image": str(path)}, device, bundle.preprocessing, args.tta)
            except Exception as err:  # one unreadable case must not stop the others
                if isinstance(err, MedsegError):
                    if len(cases) == 1:
                        raise
                    reason = str(err)
                else:
                    reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
                print(f"medseg: case '{name}' skipped: {reason}", file=sys.stderr)
                failed.append(name)
                continue
            labels, affine = pred[0].numpy(), pred.affine.numpy()
            if args.format == "dicom-seg":
                out = write_dicom_seg(labels, affine, path, args.output / f"{name}_seg.dcm", names, bundle.name, __version__)
            else:
                out = args.output / f"{name}_seg.nii.gz"
                write_label_nifti(labels, affine, out, source=path)
            if bar.disable:  # no terminal, no bar: a line per case for logs
                print(f"[{len(done_cases) + len(failed) + 1}/{len(cases)}] {name} -> {out.name}", flush=True)
            done_cases.append(name)
    done = len(cases) - len(failed)
    print(f"wrote {done} segmentation(s) to {args.output}" + (f"; {len(failed)} failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
