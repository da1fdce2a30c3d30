"""`python -m nas_engine`: see nas_engine/cli.py."""

import sys

from nas_engine.cli import main

sys.exit(main())
