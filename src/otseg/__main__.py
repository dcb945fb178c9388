"""`python -m otseg ...` (and `torchrun -m otseg train ...`)."""

import sys

from otseg.cli import main

sys.exit(main())
