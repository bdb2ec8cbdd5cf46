"""``python -m medseg.rank``: the command lives in :mod:`medseg.cli.rank`, its body in :mod:`medseg.workflows.rank`."""
from medseg.cli.rank import main

if __name__ == "__main__":
    raise SystemExit(main())
