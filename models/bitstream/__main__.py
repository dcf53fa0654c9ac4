"""``python -m models.bitstream encode / decode / info``."""

import sys

from models.bitstream import main

sys.exit(main())
