"""``python -m medseg.convert``: the command lives in :mod:`medseg.cli.convert`, its body in :mod:`medseg.workflows.convert`."""
from medseg.cli.convert import main

if __name__ == "__main__":
    raise SystemExit(main())
