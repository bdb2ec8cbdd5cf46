"""``python -m medseg.export``: see :mod:`medseg.cli.export` (the command) and :mod:`medseg.workflows.export`."""
from medseg.cli.export import main

if __name__ == "__main__":
    raise SystemExit(main())
