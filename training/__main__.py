"""``python -m activation_oracles.training`` and ``torchrun --nproc_per_node N -m activation_oracles.training``."""

import sys

from .cli import main

sys.exit(main())
