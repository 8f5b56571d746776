"""``python -m fastformer``: the command line (see :mod:`fastformer.cli`)."""

from fastformer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
