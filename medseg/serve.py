"""``python -m medseg.serve``: the command lives in :mod:`medseg.cli.serve`, its body in :mod:`medseg.workflows.serve`."""
from medseg.cli.serve import main

if __name__ == "__main__":
    raise SystemExit(main())
