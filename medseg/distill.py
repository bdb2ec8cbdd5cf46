"""``python -m medseg.distill``: the command lives in :mod:`medseg.cli.distill`, its body in :mod:`medseg.workflows.distill`."""
from medseg.cli.distill import main

if __name__ == "__main__":
    raise SystemExit(main())
