"""``python -m medseg.predict``: the command lives in :mod:`medseg.cli.predict`, its body in :mod:`medseg.workflows.predict`."""
from medseg.cli.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
