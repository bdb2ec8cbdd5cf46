"""``python -m medseg.report``: the command lives in :mod:`medseg.cli.report`, its body in :mod:`medseg.workflows.report`."""
from medseg.cli.report import main

if __name__ == "__main__":
    raise SystemExit(main())
