"""``python -m medseg.data check``: the command lives in :mod:`medseg.cli.data`, its body in :mod:`medseg.workflows.check`."""
from medseg.cli.data import main

if __name__ == "__main__":
    raise SystemExit(main())
