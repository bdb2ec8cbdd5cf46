"""``python -m medseg.plan``: the command lives in :mod:`medseg.cli.plan`, its body in :mod:`medseg.workflows.plan`."""
from medseg.cli.plan import main

if __name__ == "__main__":
    raise SystemExit(main())
