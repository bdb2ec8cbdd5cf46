"""``python -m medseg.serve``: correct a bundle's masks by clicking, in a browser page served on this machine.

Binds 127.0.0.1 by default; another --host needs --token (a bearer token every request must carry; open the
page as http://HOST:PORT/#token=T). Cases: uploads from the page, or the files and DICOM series under
--input-dir. Saved masks (NIfTI, plus DICOM SEG for DICOM input) and click logs go to --output-dir.

Example:
    python -m medseg.serve --bundle bundles/liver_ct_interactive --input-dir scans/ --output-dir corrected/
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from medseg.cli.predict import ENGINES
from medseg.errors import run_cli

#: medseg.workflows.serve.DEFAULT_MAX_UPLOAD_MB, as a plain copy: --help, and a Ctrl-C while torch, MONAI and
#: FastAPI load, answer without a traceback (tests/workflows/test_serve_audit.py checks they agree)
DEFAULT_MAX_UPLOAD_MB = 1024


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medseg.serve", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True, help="MONAI Bundle folder (bundles/<name>) or .zip")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="bearer token required on every request (needed off loopback)")
    p.add_argument("--input-dir", type=Path, help="folder of images / DICOM series the page can open")
    p.add_argument("--output-dir", type=Path, default=Path("corrected"), help="where saved masks go (default corrected/)")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="upload size limit")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--engine", choices=ENGINES, default="torch",
                   help="runtime of the forward passes: openvino / onnxruntime run the bundle's models/model.onnx "
                        "(a click on 2 CPU cores: about 4x faster than torch with openvino)")
    p.add_argument("--trust", action="store_true", help="allow a bundle not written by medseg to run its config code")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # deferred: torch, MONAI and FastAPI load inside run_cli, which answers a Ctrl-C meanwhile in one line
    from medseg.workflows import serve

    serve.check_host(args.host, args.token)  # before the bundle loads: a refused host costs nothing
    serve.run(args.bundle, host=args.host, port=args.port, token=args.token, input_dir=args.input_dir,
              output_dir=args.output_dir, device=args.device, max_upload_mb=args.max_upload_mb, trust=args.trust,
              engine=args.engine)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)
