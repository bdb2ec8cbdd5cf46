"""``python -m medseg.train``: see :mod:`medseg.cli.train` (the command) and :mod:`medseg.workflows.train`."""
from medseg.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
