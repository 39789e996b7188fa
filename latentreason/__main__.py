"""`python -m latentreason ...` is the same as the `latentreason` command."""

import sys

from latentreason.cli import main

sys.exit(main())
