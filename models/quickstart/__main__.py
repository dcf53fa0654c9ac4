"""``python -m models.quickstart train / evaluate`` (see ``models.quickstart.recipe``)."""

import sys

from models.quickstart.recipe import main

sys.exit(main())
