"""`python -m curate.cli`: the console script, run as a module."""

import sys

from curate.cli import main

sys.exit(main())
