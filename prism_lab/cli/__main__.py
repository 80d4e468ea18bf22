"""`python -m prism_lab.cli`: the same as the `prism-lab` console script."""

import sys

from prism_lab.cli import main

sys.exit(main())
