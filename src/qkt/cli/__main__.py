"""``python -m qkt.cli``: the ``qkt`` command."""

import sys

from . import main

sys.exit(main())
