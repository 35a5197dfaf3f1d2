"""``python -m efficientdet`` (also what ``torchrun -m efficientdet train ...`` runs)."""

import sys

from .cli import main

sys.exit(main())
