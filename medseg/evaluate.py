"""``python -m medseg.evaluate``: the command lives in :mod:`medseg.cli.evaluate`, its body in :mod:`medseg.workflows.evaluate`."""
from medseg.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
