"""``python -m iskra_me162`` is the same as the ``iskra-me162`` command."""

import sys

from iskra_me162.cli import main

sys.exit(main())
