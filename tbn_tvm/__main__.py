import sys

from tbn_tvm.cli import main

sys.exit(main())
