"""`python -m gbmr ...` is the same as the `gbmr` command."""

import sys

from gbmr.cli import main

sys.exit(main())
