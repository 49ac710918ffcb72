"""`python -m learnloop` runs the `learnloop` command."""

import sys

from .cli import main

sys.exit(main())
