"""``python -m models.tiny``: write every tiny component (see ``models.tiny.components``)."""

import sys

from models.tiny.components import main

sys.exit(main())
