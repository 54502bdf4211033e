"""``python -m visionkit`` (and ``torchrun -m visionkit``) runs the CLI."""

import sys

from visionkit.cli import main

sys.exit(main())
