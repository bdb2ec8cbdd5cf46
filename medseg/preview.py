"""``python -m medseg.preview``: the command lives in :mod:`medseg.cli.preview`, its body in :mod:`medseg.workflows.preview`."""
from medseg.cli.preview import main

if __name__ == "__main__":
    raise SystemExit(main())
