"""``python -m activation_oracles`` is the ``ao`` command."""

import sys

from .cli import main

sys.exit(main())
