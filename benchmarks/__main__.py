"""``python -m benchmarks``: run the benchmarks (see :mod:`benchmarks.cli`)."""

import sys

from benchmarks.cli import main

sys.exit(main())
