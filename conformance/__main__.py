"""``python -m conformance``: see :mod:`conformance.cli`."""

import sys

from conformance.cli import main

if __name__ == "__main__":  # worker processes are spawned and re-import this module: run only here
    sys.exit(main())
