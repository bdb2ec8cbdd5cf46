"""``python -m medseg.networks``: the command lives in :mod:`medseg.cli.networks`, its body in :mod:`medseg.workflows.networks`."""
from medseg.cli.networks import main

if __name__ == "__main__":
    raise SystemExit(main())
