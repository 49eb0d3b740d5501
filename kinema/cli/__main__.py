"""``python -m kinema.cli``: the ``kinema`` command (``generate --gpus N`` relaunches itself this way)."""

import sys

from . import main

sys.exit(main())
