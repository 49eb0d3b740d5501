"""``python -m kinema``: the ``kinema`` command."""

import sys

from .cli import main

sys.exit(main())
